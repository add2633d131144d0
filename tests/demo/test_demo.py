"""The offline demo assets: genuine CLDR pairs, syllable-preserving tokenizer, loadable policy and encoder."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import regex
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from semgrpo.demo import assets as demo
from semgrpo.demo.assets import DEMO_VERSION, EOS_TOKEN, build_demo, cldr_pairs, split_pairs

# Independent references built on the `regex` module's Unicode properties (the demo uses explicit ranges).
TIBETAN_SYLLABLE = regex.compile(r"(?V1)[[\p{Tibetan}]&&[\p{L}\p{M}]]+")
TIBETAN_LETTER = regex.compile(r"(?V1)[[\p{Tibetan}]&&\p{L}]")
HAN = regex.compile(r"\p{Han}")


@pytest.fixture(scope="module")
def pairs():
    return cldr_pairs()


# No test here depends on how well the base policy is trained, so their build pretrains it for 2 epochs instead
# of the demo's 20 (single-threaded, about a minute on 2 cores); every build stage still runs. The demo's own
# build (the session's `demo_assets`, default settings) is what the tests of the trained demo use.
SHORT_PRETRAIN = 2


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache = tmp_path_factory.mktemp("demo_cache")
    lines = []
    assets = build_demo(cache, seed=0, pretrain_epochs=SHORT_PRETRAIN, log=lines.append)
    return cache, assets, lines


def _tree_digest(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


# ---------------------------------------------------------------- pairs


def test_pairs_are_genuine_tibetan_and_chinese(pairs):
    assert len(pairs) >= 250
    ids = [p["id"] for p in pairs]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for p in pairs:
        assert set(p) == {"id", "bo", "zh"}
        assert TIBETAN_LETTER.search(p["bo"]), p
        assert HAN.search(p["zh"]), p
        assert not regex.search(r"\p{Latin}", p["bo"]), p  # no English fallback slipped through
        assert p["bo"] != p["id"].split(":", 1)[1]
    assert len({p["bo"] for p in pairs}) == len(pairs)
    assert len({p["zh"] for p in pairs}) == len(pairs)


def test_pairs_match_known_cldr_entries(pairs):
    by_id = {p["id"]: p for p in pairs}
    # Hand-checked CLDR entries (Afghanistan, January, Tibetan script).
    assert by_id["territory:AF"] == {"id": "territory:AF", "bo": "ཨཕ་ག་ནི་སྟཱན།", "zh": "阿富汗"}
    assert by_id["month:1"]["bo"] == "ཟླ་བ་དང་པོ" and by_id["month:1"]["zh"] == "一月"
    assert by_id["script:Tibt"]["zh"] == "藏文"
    categories = {p["id"].split(":")[0] for p in pairs}
    assert {"language", "territory", "month", "day"} <= categories


def test_split_is_deterministic_disjoint_and_about_ten_percent(pairs):
    train, dev = split_pairs(pairs, seed=0)
    assert split_pairs(pairs, seed=0) == (train, dev)
    assert split_pairs(pairs, seed=1) != (train, dev)
    assert {p["id"] for p in train}.isdisjoint(p["id"] for p in dev)
    assert len(train) + len(dev) == len(pairs)
    assert abs(len(dev) - 0.1 * len(pairs)) <= 1
    with pytest.raises(ValueError, match="dev_fraction"):
        split_pairs(pairs, seed=0, dev_fraction=1.5)


# ---------------------------------------------------------------- build


def test_build_writes_jsonl_and_marker(built, pairs, demo_assets):
    cache, assets, lines = built
    assert assets.root == cache / f"v{DEMO_VERSION}-seed0-pretrain{SHORT_PRETRAIN}"
    assert demo_assets.root == demo.default_cache_dir() / f"v{DEMO_VERSION}-seed0"  # the default build's name
    train = [json.loads(x) for x in assets.train_path.read_text(encoding="utf-8").splitlines()]
    dev = [json.loads(x) for x in assets.dev_path.read_text(encoding="utf-8").splitlines()]
    assert (train, dev) == split_pairs(pairs, seed=0)
    marker = json.loads((assets.root / demo.MARKER_NAME).read_text())
    assert marker["version"] == DEMO_VERSION and marker["seed"] == 0
    assert marker["pretrain_epochs"] == SHORT_PRETRAIN
    assert not [p for p in cache.iterdir() if p.name.startswith(".build")], "temp build dir left behind"
    assert any("built" in line for line in lines)


def test_build_is_idempotent_and_deterministic(built, tmp_path, demo_assets):
    cache, assets, _ = built
    digest = _tree_digest(assets.root)
    lines = []
    again = build_demo(cache, seed=0, pretrain_epochs=SHORT_PRETRAIN, log=lines.append)
    assert again == assets and lines == [], "a completed build must be reused, not rebuilt"
    assert _tree_digest(assets.root) == digest
    # Two builds from scratch must be byte-identical: `built` and one more, with the same (short) pretraining;
    # every stage still runs, and determinism does not depend on the epoch count.
    fresh = build_demo(tmp_path / "a", seed=0, pretrain_epochs=SHORT_PRETRAIN, log=lambda s: None)
    assert _tree_digest(fresh.root) == digest, "same seed must give byte-identical files"
    # The short pretraining did take effect: not the demo's default build, down to the policy's weights.
    assert _tree_digest(fresh.root) != _tree_digest(demo_assets.root)
    assert _tree_digest(fresh.policy_path) != _tree_digest(demo_assets.policy_path)


def test_stale_marker_is_not_trusted(tmp_path):
    root = tmp_path / "v0"
    root.mkdir()
    (root / demo.MARKER_NAME).write_text(json.dumps({"version": DEMO_VERSION - 1, "seed": 0}))
    assert not demo._marker_ok(root, 0)
    (root / demo.MARKER_NAME).write_text(json.dumps({"version": DEMO_VERSION, "seed": 3}))
    assert not demo._marker_ok(root, 0) and demo._marker_ok(root, 3)
    assert demo._marker_ok(root, 3, 20)  # a marker from before the key: the default 20 pretraining epochs
    # A build with fewer pretraining epochs never passes for the demo (nor the demo for it).
    (root / demo.MARKER_NAME).write_text(json.dumps({"version": DEMO_VERSION, "seed": 3, "pretrain_epochs": 2}))
    assert demo._marker_ok(root, 3, 2) and not demo._marker_ok(root, 3) and not demo._marker_ok(root, 3, 20)
    (root / demo.MARKER_NAME).write_text(json.dumps({"version": DEMO_VERSION, "seed": 3, "pretrain_epochs": 20}))
    assert demo._marker_ok(root, 3) and not demo._marker_ok(root, 3, 2)
    (root / demo.MARKER_NAME).write_text("{not json")
    assert not demo._marker_ok(root, 3)


def test_default_cache_dir_and_bad_options(monkeypatch, tmp_path):
    monkeypatch.setenv("SEMGRPO_CACHE", str(tmp_path / "c"))
    assert demo.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("SEMGRPO_CACHE")
    assert str(demo.default_cache_dir()).endswith(os.path.join(".cache", "semgrpo", "demo"))
    with pytest.raises(ValueError, match="seed"):
        build_demo(tmp_path, seed=-1)
    with pytest.raises(ValueError, match="encoder_epochs"):
        build_demo(tmp_path, seed=0, encoder_epochs=0)
    for bad in (0, True, 2.0):
        with pytest.raises(ValueError, match="pretrain_epochs"):
            build_demo(tmp_path, seed=0, pretrain_epochs=bad)
    assert list(tmp_path.iterdir()) == []  # refused before anything is written


# ---------------------------------------------------------------- tokenizer


def test_tokenizer_keeps_tibetan_syllables_whole(built, pairs):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(built[1].tokenizer_path))
    pre = tok.backend_tokenizer.pre_tokenizer
    for p in pairs:
        text = p["bo"]
        pieces = [text[a:b] for _, (a, b) in pre.pre_tokenize_str(text)]
        assert "".join(pieces) == text
        syllabic = [s for s in pieces if TIBETAN_SYLLABLE.search(s)]
        # every piece with Tibetan letters is exactly one syllable, and all syllables appear in order
        assert syllabic == TIBETAN_SYLLABLE.findall(text), (text, pieces)
        assert all(TIBETAN_SYLLABLE.fullmatch(s) for s in syllabic), (text, pieces)
        # tokens never straddle two pieces
        bounds = set()
        pos = 0
        for s in pieces:
            pos += len(s)
            bounds.add(pos)
        enc = tok(text, return_offsets_mapping=True, add_special_tokens=False)
        for a, b in enc["offset_mapping"]:
            assert not any(a < x < b for x in bounds), (text, a, b)
        assert tok.decode(enc["input_ids"]) == text
    han = "阿富汗 中国"
    han_pieces = [han[a:b] for _, (a, b) in pre.pre_tokenize_str(han)]
    assert han_pieces == ["阿", "富", "汗", " ", "中", "国"]
    # syllables with subjoined letters and vowel signs stay whole; tsheg/shad are split off
    word = "ཨཕ་ག་ནི་སྟཱན།"
    assert [word[a:b] for _, (a, b) in pre.pre_tokenize_str(word)] == [
        "ཨཕ", "་", "ག", "་", "ནི", "་", "སྟཱན", "།"
    ]


def test_tokenizer_specials_and_roundtrip(built):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(built[1].tokenizer_path))
    assert tok.eos_token == EOS_TOKEN and tok.pad_token == EOS_TOKEN
    assert tok.eos_token_id == tok.pad_token_id == tok.convert_tokens_to_ids(EOS_TOKEN)
    assert not getattr(tok, "chat_template", None)
    assert 300 <= len(tok) <= 2048
    text = "Translate: 阿富汗 -> ཨཕ་ག་ནི་སྟཱན། 42 é"  # byte-level: anything encodes, nothing unknown
    assert tok.decode(tok(text)["input_ids"]) == text


# ---------------------------------------------------------------- policy and encoder


def test_policy_loads_offline_and_generates(built):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assets = built[1]
    tok = AutoTokenizer.from_pretrained(str(assets.policy_path))
    model = AutoModelForCausalLM.from_pretrained(str(assets.policy_path))
    cfg = model.config
    assert cfg.model_type == "qwen3" and cfg.vocab_size == len(tok)
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (128, 4, 2, 32)
    assert cfg.eos_token_id == cfg.pad_token_id == tok.eos_token_id
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    ids = tok("阿富汗", return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 6)
    assert torch.equal(out[0, : ids.shape[1]], ids[0])


def test_encoder_loads_offline_and_is_graded(built):
    from sentence_transformers import SentenceTransformer

    assets = built[1]
    model = SentenceTransformer(str(assets.encoder_path), device="cpu", local_files_only=True)
    dev = [json.loads(x) for x in assets.dev_path.read_text(encoding="utf-8").splitlines()]
    bo = [p["bo"] for p in dev]
    zh = [p["zh"] for p in dev]
    zh_next = zh[1:] + zh[:1]  # an unrelated pair for each
    # partial: every other Han character taken from the next pair's Chinese
    zh_partial = [
        "".join(c if i % 2 == 0 else o[i % len(o)] for i, c in enumerate(z)) if len(z) > 1 else z + o[0]
        for z, o in zip(zh, zh_next)
    ]
    emb = {k: torch.nn.functional.normalize(model.encode(v, convert_to_tensor=True).float(), dim=-1)
           for k, v in {"bo": bo, "zh": zh, "part": zh_partial, "next": zh_next}.items()}
    true = (emb["bo"] * emb["zh"]).sum(-1).mean()
    partial = (emb["bo"] * emb["part"]).sum(-1).mean()
    unrelated = (emb["bo"] * emb["next"]).sum(-1).mean()
    assert true > partial > unrelated, (float(true), float(partial), float(unrelated))
    # bo-bo: a reference vs itself with every other syllable swapped vs another reference
    syl = [TIBETAN_SYLLABLE.findall(b) for b in bo]
    bo_part = [
        "་".join(s if i % 2 == 0 else o[i % len(o)] for i, s in enumerate(a)) if len(a) > 1 else b + "་" + o[0]
        for a, o, b in zip(syl, syl[1:] + syl[:1], bo)
    ]
    e_part = torch.nn.functional.normalize(model.encode(bo_part, convert_to_tensor=True).float(), dim=-1)
    e_next = torch.roll(emb["bo"], 1, dims=0)
    assert (emb["bo"] * e_part).sum(-1).mean() > (emb["bo"] * e_next).sum(-1).mean()
    marker = json.loads((assets.root / demo.MARKER_NAME).read_text())
    assert marker["encoder"]["after"]["cross_graded"] == 1.0
