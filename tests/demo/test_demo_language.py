"""The demo in another CLDR language (issue #29): its pairs, its tokenizer's units, a tiny build, the `demo`
config section (and the old `demo: true`), and two GRPO steps on Khmer through the command line."""

from __future__ import annotations

import json

import pytest
import regex
from _helpers import run_cli

from semgrpo.config import load_config, to_dict, upgrade_saved_config
from semgrpo.demo.assets import DEMO_VERSION, MARKER_NAME, build_demo, cached_demo
from semgrpo.demo.cldr import MAX_PAIRS, MIN_PAIRS, DemoError, cldr_pairs, cldr_source_passages
from semgrpo.demo.tokenizer import PRETOKENIZE_PATTERN, pretokenize_pattern
from semgrpo.run_folder import compare_configs

# Independent references: the `regex` module's Unicode scripts (the demo uses semgrpo.script's tables).
KHMER_RUN = regex.compile(r"(?V1)(?:[[\p{Khmer}\p{Inherited}]&&[\p{L}\p{M}]]|[\u200c\u200d])+")
FOREIGN_TO_KHMER = regex.compile(r"(?V1)[[\p{L}\p{M}]--[\p{Khmer}\p{Common}\p{Inherited}]]")


@pytest.fixture(scope="module")
def khmer_pairs():
    return cldr_pairs("km", "zh")


def test_khmer_pairs_are_genuine_and_trimmed_to_the_tibetan_size(khmer_pairs):
    assert len(khmer_pairs) == MAX_PAIRS  # babel has about 1,300; the demo keeps the size of the Tibetan one
    ids = [p["id"] for p in khmer_pairs]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for p in khmer_pairs:
        assert set(p) == {"id", "km", "zh"}
        assert regex.search(r"\p{Khmer}", p["km"]) and not FOREIGN_TO_KHMER.search(p["km"]), p
        assert regex.search(r"\p{Han}", p["zh"]), p
    assert len({p["km"] for p in khmer_pairs}) == len({p["zh"] for p in khmer_pairs}) == len(khmer_pairs)
    by_id = {p["id"]: p for p in khmer_pairs}
    assert by_id["territory:KH"] == {"id": "territory:KH", "km": "កម្ពុជា", "zh": "柬埔寨"}  # hand-checked
    assert by_id["month:1"]["zh"] == "一月"
    # The trim keeps whole categories first: every Khmer territory pair is in (fewer than MAX_PAIRS of them).
    assert sum(i.startswith("territory:") for i in ids) > 150
    assert not any(i.startswith("city:") for i in ids)


def test_english_source_and_its_passages():
    pairs = cldr_pairs("ug", "en")
    assert len(pairs) == MAX_PAIRS and all(set(p) == {"id", "ug", "en"} for p in pairs)
    assert all(regex.search(r"\p{Latin}", p["en"]) for p in pairs)
    passages = cldr_source_passages("ug", "en")
    assert passages[0].endswith(".") and ", " in passages[0] and not regex.search(r"\p{Arabic}", "".join(passages))


def test_too_few_pairs_and_unknown_codes_are_one_clear_error():
    with pytest.raises(DemoError, match=rf"only 76 Sichuan Yi/Chinese CLDR pairs \(ii/zh\); the demo needs at least "
                                        rf"{MIN_PAIRS}"):
        cldr_pairs("ii", "zh")
    with pytest.raises(DemoError, match="demo.language: 'xx' is not a CLDR locale"):
        cldr_pairs("xx", "zh")
    with pytest.raises(DemoError, match="both 'km'"):
        cldr_pairs("km", "km")


def test_pretokenizer_keeps_khmer_and_arabic_units(khmer_pairs):
    from tokenizers import Regex, pre_tokenizers

    assert pretokenize_pattern(("Hani", "Tibt")) == PRETOKENIZE_PATTERN  # the Tibetan demo's, unchanged
    split = pre_tokenizers.Split(Regex(pretokenize_pattern(("Hani", "Khmr"))), behavior="isolated")
    for p in khmer_pairs:
        text = p["km"]
        pieces = [text[a:b] for _, (a, b) in split.pre_tokenize_str(text)]
        assert "".join(pieces) == text
        # the Khmer pieces are exactly the runs of Khmer letters and marks: no cluster is ever cut
        assert [s for s in pieces if KHMER_RUN.fullmatch(s)] == KHMER_RUN.findall(text), (text, pieces)
    han = [piece for piece, _ in split.pre_tokenize_str("柬埔寨")]
    assert han == ["柬", "埔", "寨"]
    arabic = pre_tokenizers.Split(Regex(pretokenize_pattern(("Arab", "Hani"))), behavior="isolated")
    word = "كِتَابٌ، می\u200cخواهم"  # harakat (Inherited) and a ZWNJ inside words
    assert [piece for piece, _ in arabic.pre_tokenize_str(word)] == ["كِتَابٌ", "،", " ", "می\u200cخواهم"]


def test_config_section_and_the_old_boolean(tmp_path):
    assert load_config([], ["demo=true"]).demo.enabled
    assert load_config([], ["demo=true", "demo.language=km"]).demo.language == "km"
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("demo: true\n")
    assert load_config([yaml_file]).demo.enabled
    yaml_file.write_text("demo:\n  enabled: true\n  language: am\n  source: en\n")
    cfg = load_config([yaml_file])
    assert (cfg.demo.enabled, cfg.demo.language, cfg.demo.source) == (True, "am", "en")
    assert not load_config(["configs/demo.yaml"], ["demo=false"]).demo.enabled
    # A run or checkpoint config.json saved before the section: {"demo": true}. Resuming it is not refused.
    old = to_dict(load_config(["configs/demo.yaml"]))
    old["demo"] = True
    assert upgrade_saved_config(old)["demo"] == {"enabled": True}
    assert compare_configs(old, to_dict(load_config(["configs/demo.yaml"]))) == ([], [])
    # ... and a change of language is refused (it is another run), while turning the demo off may change.
    applied, refused = compare_configs(old, to_dict(load_config(["configs/demo.yaml"], ["demo.language=km"])))
    assert [k for k, _, _ in refused] == ["demo.language"]
    applied, refused = compare_configs(old, to_dict(load_config(["configs/demo.yaml"], ["demo=false"])))
    assert [k for k, _, _ in applied] == ["demo.enabled"] and refused == []


SHORT = dict(seed=0, pretrain_epochs=1, encoder_epochs=1)


@pytest.fixture(scope="module")
def khmer_build(tmp_path_factory):
    """A tiny Khmer build: every stage runs, with one epoch of pretraining and of encoder training."""
    cache = tmp_path_factory.mktemp("demo_km")
    return cache, build_demo(cache, language="km", log=lambda *_: None, **SHORT)


def test_tiny_khmer_build(khmer_build, khmer_pairs):
    cache, assets = khmer_build
    assert assets.root == cache / f"v{DEMO_VERSION}-km-zh-seed0-pretrain1"
    train = [json.loads(x) for x in assets.train_path.read_text(encoding="utf-8").splitlines()]
    dev = [json.loads(x) for x in assets.dev_path.read_text(encoding="utf-8").splitlines()]
    assert sorted(train + dev, key=lambda r: r["id"]) == khmer_pairs and list(train[0]) == ["id", "km", "zh"]
    marker = json.loads((assets.root / MARKER_NAME).read_text())
    assert (marker["language"], marker["source"], marker["num_pairs"]) == ("km", "zh", MAX_PAIRS)
    assert cached_demo(cache, language="km", pretrain_epochs=1) == assets
    assert cached_demo(cache, language="am", pretrain_epochs=1) is None  # another language, another folder
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(assets.tokenizer_path))
    text = khmer_pairs[0]["km"]
    assert tok.decode(tok(text)["input_ids"]) == text
    assert "Khmer" in json.loads((assets.tokenizer_path / "tokenizer.json").read_text())["pre_tokenizer"][
        "pretokenizers"][0]["pattern"]["Regex"]


def test_two_grpo_steps_on_khmer_from_the_command_line(khmer_build, tmp_path):
    """demo.language=km through bin/train_grpo.py (paths of the tiny build, so nothing big is built): the task
    becomes mt_zh_km, R_lang checks Khmer, two steps run and the run records the demo section."""
    _, assets = khmer_build
    run = tmp_path / "run"
    proc = run_cli("train_grpo.py", "demo.language=km", f"output_dir={run}", "grpo.max_steps=2", "sft.before_grpo=false",
                   f"model.path={assets.policy_path}", f"model.tokenizer={assets.tokenizer_path}",
                   f"data.train={assets.train_path}", f"data.dev={assets.dev_path}",
                   f"reward.encoder={assets.encoder_path}", f"tax_meter.ood_passages={assets.ood_path}",
                   "tax_meter.every_steps=0", "reward.tau=0.0", "run.report_to=none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = json.loads((run / "config.json").read_text())
    assert saved["demo"] == {"enabled": True, "language": "km", "source": "zh"} and saved["data"]["task"] == "mt_zh_km"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "reward/language" in r] == [1, 2]
    assert json.loads((run / "summary.json").read_text())["steps"] == 2


def test_demo_language_errors_from_the_command_line(tmp_path):
    for override, needle in (("demo.language=xx", "demo.language: 'xx' is not a CLDR locale"),
                             ("demo.language=ii", "only 76 Sichuan Yi/Chinese CLDR pairs")):
        proc = run_cli("train_grpo.py", override, f"output_dir={tmp_path / 'run'}", "grpo.max_steps=1",
                       env={"SEMGRPO_CACHE": str(tmp_path / "cache")})
        errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
        assert proc.returncode == 2 and len(errors) == 1 and needle in errors[0], proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()
