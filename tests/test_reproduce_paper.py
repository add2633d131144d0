"""benchmarks/reproduce_paper.py: the corpus split, the statistics, and `--quick` end to end (every arm trains,
every number is present, the plot is written), plus its errors."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from reproduce.corpus import CorpusError, load_corpus
from reproduce.report import ARMS, arm_metrics, interval

SCRIPT = ROOT / "benchmarks" / "reproduce_paper.py"


def _run(*args, data_root, cwd=ROOT):
    """The script with `data_root` as the user's data root ($SEMGRPO_DATA: no --data flag, the default path)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SEMGRPO_DATA": str(data_root)}
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=900, env=env)


def test_corpus_keeps_ood_out_of_pretraining_and_never_reads_the_mt_pairs(real_data_root):
    data = real_data_root
    corpus = load_corpus(data)
    drcd = json.loads((data / "drcd" / "dev.json").read_text(encoding="utf-8"))["data"]
    held = {p["context"].strip() for a in drcd[-corpus.heldout_articles:] for p in a["paragraphs"]}
    cmrc_dev = {p["context"].strip() for a in json.loads((data / "cmrc2018" / "dev.json").read_text(
        encoding="utf-8"))["data"] for p in a["paragraphs"]}
    assert corpus.heldout_articles == round(len(drcd) * 0.1)
    assert set(corpus.ood) == held | cmrc_dev
    assert not set(corpus.ood) & set(corpus.pretraining)
    pairs = [json.loads(x) for x in (data / "bo_zh_openpecha" / "train.jsonl").read_text(
        encoding="utf-8").splitlines() if x.strip()]
    text = "\n".join(corpus.pretraining)
    # Short MT lines may occur inside a longer text by chance; whole long ones would mean the pairs were read.
    long_zh = [p["zh"] for p in pairs if len(p["zh"]) >= 20]
    assert sum(z in text for z in long_zh) < 0.05 * len(long_zh)


def test_corpus_errors_name_the_file_and_the_fetch_command(tmp_path):
    with pytest.raises(CorpusError, match=f"missing data file.*drcd.*fetch them with: python bin/get_data.py --root "
                                          f"{tmp_path}"):
        load_corpus(tmp_path)
    with pytest.raises(CorpusError, match="heldout_fraction"):
        load_corpus(tmp_path, heldout_fraction=0.7)


def test_interval_against_hand_computed_t_interval():
    iv = interval([1.0, 2.0, 3.0])  # mean 2, sample sd 1, t(0.975, 2) = 4.303
    assert iv["mean"] == pytest.approx(2.0)
    assert iv["ci95"] == pytest.approx(4.303 / math.sqrt(3), rel=1e-6)
    assert interval([5.0]) == {"mean": 5.0, "ci95": 0.0, "n": 1}


def _model(nll_mean, sim=0.5):
    stats = lambda v: {"mean": v, "median": v - 0.1, "p90": v + 1.0}
    return {"task": {"bleu": 1.0, "chrf": 2.0, "similarity": {"mean": sim}, "script_consistent": 0.9},
            "ood": {"nll": stats(nll_mean), "kl": stats(0.2), "delta_nll": stats(0.0)}}


def test_arm_metrics_deltas_are_against_the_base_row():
    ev = {"models": {"base": _model(5.0), "strong_sft": _model(5.5, sim=0.7)}}
    m = arm_metrics(ev, "strong_sft")
    assert m["delta_nll_mean"] == pytest.approx(0.5) and m["delta_nll_p90"] == pytest.approx(0.5)
    assert m["similarity"] == 0.7 and m["kl_p90"] == pytest.approx(1.2)
    with pytest.raises(KeyError, match="cold_start"):
        arm_metrics(ev, "cold_start")


def test_bad_arguments_exit_2_with_one_line(tmp_path):
    r = _run("--jobs", "0", "--output", tmp_path / "o", data_root=tmp_path / "root")
    assert r.returncode == 2 and "--jobs must be >= 1" in r.stderr
    r = _run("--data", tmp_path / "nowhere", "--output", tmp_path / "o", data_root=tmp_path / "root")
    assert r.returncode == 2 and "missing data file" in r.stderr and "nowhere" in r.stderr
    # The default is the data root ($SEMGRPO_DATA here): an empty one names what to run.
    r = _run("--output", tmp_path / "o", data_root=tmp_path / "empty_root")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert f"{tmp_path / 'empty_root' / 'drcd' / 'dev.json'}" in r.stderr
    assert r.stderr.rstrip().endswith("fetch them with: python bin/get_data.py")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seeds: [0]\n")
    r = _run("--config", bad, "--output", tmp_path / "o", data_root=tmp_path / "root")
    assert r.returncode == 2 and "missing section" in r.stderr


@pytest.fixture(scope="module")
def quick(tmp_path_factory, real_data_root):
    root = tmp_path_factory.mktemp("reproduce")
    r = _run("--quick", "--output", root / "out", "--cache", root / "cache", "--results", root / "results",
             data_root=real_data_root)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return root, r


def test_quick_run_trains_every_arm_and_reports_every_number(quick):
    root, r = quick
    results = json.loads((root / "results" / "results.json").read_text(encoding="utf-8"))
    assert results["quick"] is True and list(results["per_seed"]) == ["0"]
    for arm in ARMS:
        m = results["per_seed"]["0"][arm]
        assert len(m) == 13 and all(isinstance(v, float | int) and math.isfinite(v) for v in m.values()), (arm, m)
        # every arm trained: its checkpoint chain exists and it was evaluated on the dev pairs
        assert any((root / "out" / "seed0" / arm / "checkpoints").iterdir())
    base = results["base"]["ood"]
    assert base["base_nll"] > 0 and base["unigram_nll"] > 0 and base["tokens"] > 0
    assert results["tau"]["0"] is not None
    png = (root / "results" / "tax_vs_quality.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    table = (root / "results" / "table.md").read_text(encoding="utf-8")
    for label in ("Base", "Cold start (SFT)", "Cold start + GRPO (ours)", "Strong SFT", "Appendix C (a)"):
        assert label in table
    for stage in ("base", "seed0.cold_start", "seed0.cold_start_grpo", "seed0.strong_sft", "seed0.evaluate"):
        assert stage in r.stdout  # a progress line per stage


def test_quick_rerun_skips_finished_stages_and_a_failing_stage_names_its_log(quick, tmp_path, real_data_root):
    root, _ = quick
    r = _run("--quick", "--output", root / "out", "--cache", root / "cache", "--results", root / "results2",
             data_root=real_data_root)
    assert r.returncode == 0 and r.stdout.count("skipped") == 4 and "base: cached" in r.stdout
    assert (root / "results2" / "results.json").is_file()
    # A trainer that refuses its config: the stage fails, the command says which and where its log is.
    cfg = (ROOT / "benchmarks" / "reproduce" / "config.yaml").read_text(encoding="utf-8")
    bad = tmp_path / "bad.yaml"
    bad.write_text(cfg.replace("loss_type: grpo", "loss_type: nonsense"), encoding="utf-8")
    r = _run("--quick", "--config", bad, "--output", tmp_path / "o", "--cache", root / "cache",
             data_root=real_data_root)
    assert r.returncode == 1
    assert "stage seed0." in r.stderr and "failed (exit 2)" in r.stderr and "loss_type" in r.stderr
