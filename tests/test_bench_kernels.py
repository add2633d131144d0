"""benchmarks/bench_kernels.py --fused-linear: the loss it writes once, its CPU memory measure, a tiny end-to-end run."""

import csv
import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
from _tolerance import sum_rtol

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_fused_linear as bfl
import bench_kernels

from semgrpo.ops.grpo_loss import policy_loss_from_logps


@pytest.mark.parametrize("loss_type", ["dapo", "grpo"])
def test_benchmark_loss_matches_the_project_trl_formula(loss_type):
    g = torch.Generator().manual_seed(0)
    B, T = 3, 7
    logp = -torch.rand(B, T, generator=g) * 5
    old = logp + 0.3 * torch.randn(B, T, generator=g)  # some ratios outside [0.8, 1.2]
    ref = logp + 0.2 * torch.randn(B, T, generator=g)
    mask = (torch.rand(B, T, generator=g) > 0.3).float()
    adv = torch.randn(B, generator=g)
    cfg = bfl.LossConfig(loss_type=loss_type, beta=0.04)
    got = bfl.grpo_loss_from_logps(logp, mask, adv, old, ref, cfg)
    want, _ = policy_loss_from_logps(logp, mask, adv, old, ref, eps_low=0.2, eps_high=0.2, beta=0.04,
                                     loss_type=loss_type, use_bias_correction_kl=True)
    # two fp32 implementations of the same per-token formula and its mean over B x T tokens
    tol = 2 * sum_rtol(torch.float32, logp.numel())
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_cpu_peak_extra_memory_counts_bytes_live_together():
    before = torch.ones(1 << 20)  # 4 MiB allocated before the call and freed inside it: not the call's
    kept = []

    def fn():
        nonlocal before
        a = torch.ones(1 << 20)  # 4 MiB
        b = torch.ones(2 << 20)  # 8 MiB, live together with a: peak 12 MiB
        del a, b
        before = None
        kept.append(torch.ones(1 << 18))  # 1 MiB left behind

    peak = bfl.cpu_peak_extra_memory(fn)
    assert 12 * 2**20 <= peak < 12 * 2**20 + 2**16


def test_fused_linear_smoke_run_writes_every_method(tmp_path, capsys):
    rc = bench_kernels.main(["--fused-linear", "--smoke", "--fl-rep", "1", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| method | device | dtype | N | H | V |" in out
    assert "peak extra memory ours / eager" in out
    with open(tmp_path / "bench_kernels_fused_linear_cpu_smoke.csv") as f:
        rows = list(csv.DictReader(f))
    vals = {(r["provider"], r["metric"]): float(r["p50"]) for r in rows}
    assert {r["shape"] for r in rows} == {"B=2,T=32,N=64,H=64,V=1000,float32"}
    methods = ["ours", "eager"]
    methods += [m for m, mod in (("trl_chunked", "trl"), ("liger", "liger_kernel")) if importlib.util.find_spec(mod)]
    for m in methods:
        assert vals[(m, "time")] > 0
        assert 0 < vals[(m, "peak_extra_mem")] < 100 and math.isfinite(vals[(m, "peak_extra_mem")])
        for e in ("loss", "grad_hidden", "grad_weight"):
            assert vals[(m, f"max_abs_err_{e}")] < 1e-5, (m, e)
    for metric in ("mem_ratio_vs_eager", "mem_ratio_vs_trl_chunked", "time_ratio_vs_trl_chunked"):
        if "trl" in metric and "trl_chunked" not in methods:
            continue
        assert vals[("ours", metric)] > 0
