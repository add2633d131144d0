"""benchmarks/bench_train.py: the shared reward, the aggregation, and a toy-size end-to-end run (< 60 s)."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_train
from common import CSV_COLUMNS, CsvWriter
from train_runners import BenchReward

BO = "\u0f56\u0f7c\u0f51\u0f0b"  # a Tibetan syllable with tsheg, 4 characters


def test_reward_hand_computed_and_both_call_styles():
    r = BenchReward("tibetan")
    completions = [BO, BO + BO, "中文", ""]
    refs = [BO, BO, "\u0f40\u0f0b", BO]
    # lang: 1, 1, 0, 0 (empty is not in the target script)? length term: 1, 1 - 4/8, 1 - 0/2, 1 - 4/4
    want_len = [1.0, 0.5, 1.0, 0.0]
    lang = r.lang(None, completions, refs)
    assert lang[:3] == [1.0, 1.0, 0.0]
    want = [a + b for a, b in zip(lang, want_len)]
    assert r([""] * 4, completions, refs) == pytest.approx(want)
    # TRL passes keyword arguments with the dataset column `reference`
    assert r(prompts=[""] * 4, completions=completions, reference=refs, completion_ids=None) == pytest.approx(want)


def test_reward_rejects_missing_references():
    with pytest.raises(ValueError, match="one reference per completion"):
        BenchReward("tibetan")([""], ["a"])
    with pytest.raises(ValueError, match="one reference per completion"):
        BenchReward("tibetan")([""], ["a", "b"], ["a"])


def _result(provider, steps, rss):
    return {"provider": provider, "shape": "toy", "peak_rss_mib": rss,
            "records": [dict(generation=s * 0.5, reward=0.0, logprobs=s * 0.1, policy=s * 0.2, optimizer=s * 0.1,
                             step=s, samples=16, tokens=80) for s in steps]}


def test_aggregate_quantiles_and_ratios(tmp_path):
    w = CsvWriter(tmp_path / "x.csv")
    p50 = bench_train.aggregate([_result("semgrpo", [1.0, 2.0], 100.0), _result("trl", [4.0], 200.0),
                                 _result("semgrpo", [3.0], 300.0)], w, mode="train")
    assert p50["semgrpo"]["step_seconds"] == pytest.approx(2.0)  # median of 1, 2, 3 pooled over runs
    assert p50["semgrpo"]["samples_per_second"] == pytest.approx(8.0)  # median of 16, 8, 16/3
    assert p50["semgrpo"]["other_seconds"] == pytest.approx(0.2)  # 10% of 2 s not in a phase
    assert p50["semgrpo"]["peak_rss"] == pytest.approx(200.0)
    assert p50["ratio"]["step_seconds"] == pytest.approx(0.5)
    assert p50["ratio"]["completion_tokens_per_second"] == pytest.approx((80 / 2) / (80 / 4))
    rows = {(r["provider"], r["metric"]): r for r in w.rows}
    assert float(rows[("semgrpo", "step_seconds")]["p20"]) == pytest.approx(1.4)  # linear interpolation
    assert float(rows[("semgrpo/trl", "peak_rss")]["p50"]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="'trl'"):
        bench_train.aggregate([_result("semgrpo", [1.0], 1.0)], w, mode="train")


def test_run_once_rejects_unknown_provider(tmp_path):
    with pytest.raises(ValueError, match="'vllm'"):
        bench_train.run_once("vllm", steps=1, warmup=0, threads=1, seed=0, workdir=tmp_path)


def test_cli_rejects_bad_sizes(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_train.py"), "--reps", "0",
                          "--csv", str(tmp_path / "x.csv")], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "--reps must be >= 1, got 0" in out.stderr
    assert not (tmp_path / "x.csv").exists()


def test_toy_run_writes_csv(tmp_path):
    pytest.importorskip("trl", reason="TRL is the peer trainer of this benchmark")
    pytest.importorskip("deepspeed")
    path = tmp_path / "bench.csv"
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_train.py"), "--reps", "1", "--steps", "1",
                          "--warmup", "0", "--threads", "1", "--csv", str(path)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        rows = list(reader)
    by = {(r["provider"], r["metric"]): r for r in rows}
    metrics = [m for m, _, _ in bench_train.STEP_METRICS] + ["peak_rss"]
    assert set(by) == {(p, m) for p in ("semgrpo", "trl", "semgrpo/trl") for m in metrics}
    for p in ("semgrpo", "trl"):
        step = float(by[(p, "step_seconds")]["p50"])
        assert step > 0 and float(by[(p, "generation_seconds")]["p50"]) > 0
        # the CSV rounds each figure to 6 significant digits: two roundings of 5e-6 relative
        assert float(by[(p, "samples_per_second")]["p50"]) == pytest.approx(16 / step, rel=1e-5)
        assert 1 <= float(by[(p, "mean_completion_length")]["p50"]) <= 16
        assert float(by[(p, "peak_rss")]["p50"]) > 100
        phases = sum(float(by[(p, m)]["p50"]) for m in metrics[:6])
        # phases + other = step (one step: p50 = the value); 7 rounded figures summed
        assert phases == pytest.approx(step, rel=7 * 5e-6)
    for m in metrics:
        want = float(by[("semgrpo", m)]["p50"]) / float(by[("trl", m)]["p50"])
        assert float(by[("semgrpo/trl", m)]["p50"]) == pytest.approx(want, rel=3 * 5e-6)  # three rounded figures
    assert "bench_train" in out.stdout.splitlines()[-1] and "samples/s" in out.stdout.splitlines()[-1]


def test_derived_ds_config(tmp_path):
    base = tmp_path / "base.json"
    base.write_text('{"train_micro_batch_size_per_gpu": 8, "zero_optimization": {"stage": 3}}')
    out = bench_train.derived_ds_config(base, ["zero_optimization.memory_efficient_linear=false",
                                               "train_micro_batch_size_per_gpu=16"], tmp_path / "out.json")
    import json

    assert json.loads(out.read_text()) == {"train_micro_batch_size_per_gpu": 16,
                                           "zero_optimization": {"stage": 3, "memory_efficient_linear": False}}
    with pytest.raises(ValueError, match="not of the form"):
        bench_train.derived_ds_config(base, ["stage"], tmp_path / "o.json")
    with pytest.raises(ValueError, match="'train_micro_batch_size_per_gpu' is not a section"):
        bench_train.derived_ds_config(base, ["train_micro_batch_size_per_gpu.x=1"], tmp_path / "o.json")


def test_gpu_size_is_qwen3_06b_shaped():
    import torch
    from train_runners import QWEN3_06B_SHAPE
    from transformers import Qwen3Config, Qwen3ForCausalLM

    with torch.device("meta"):
        model = Qwen3ForCausalLM(Qwen3Config(**QWEN3_06B_SHAPE))
    n = sum(p.numel() for p in model.parameters())
    assert 0.55e9 < n < 0.65e9, n  # Qwen3-0.6B: 0.6B parameters with tied embeddings


def test_aggregate_reports_gpu_memory_when_every_run_has_it(tmp_path):
    runs = [_result("semgrpo", [1.0], 100.0), _result("trl", [2.0], 200.0)]
    for r, gpu in zip(runs, (3000.0, 4000.0)):
        r["peak_gpu_mib"] = gpu
    w = CsvWriter(tmp_path / "x.csv")
    p50 = bench_train.aggregate(runs, w, mode="train")
    assert p50["semgrpo"]["peak_gpu_memory"] == pytest.approx(3000.0)
    assert p50["ratio"]["peak_gpu_memory"] == pytest.approx(0.75)
    assert "peak GPU memory 3000 vs 4000 MiB" in bench_train.summary_line(p50, device="gpu")
    runs[1]["peak_gpu_mib"] = None  # a CPU run: no GPU rows at all
    assert "peak_gpu_memory" not in bench_train.aggregate(runs, CsvWriter(tmp_path / "y.csv"), mode="train")["ratio"]
