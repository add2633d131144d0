"""Kernel microbenchmarks: ours (Triton) vs torch eager, torch.compile and Liger-Kernel.

    python benchmarks/bench_kernels.py                  # CUDA: full shapes, CSV to benchmarks/results/
    python benchmarks/bench_kernels.py --smoke          # small shapes on CPU, seconds (torch paths; with
                                                        # TRITON_INTERPRET=1 the Triton ones interpreted too)
    python benchmarks/bench_kernels.py --out DIR --providers ours,eager
    python benchmarks/bench_kernels.py --fused-linear   # GRPO loss from hidden states: ours, TRL, Liger, eager
    python benchmarks/bench_kernels.py --fused-linear --smoke   # the same at 2x32 tokens, H=64, V=1000

Per op and shape: time p50/p20/p80 (ms), achieved GB/s and % of the device's peak bandwidth under a
stated byte model, speedup vs torch eager, peak extra memory. One CSV row per metric
(columns in ``common.CSV_COLUMNS``) and one summary line per op on stdout.

``--fused-linear`` instead compares forward+backward of the GRPO loss from hidden states and the LM head
(``bench_fused_linear.py``): time, peak extra memory, and errors against an fp32 eager reference, to
``bench_kernels_fused_linear_<device>.csv`` and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_fused_linear
from common import CsvWriter, bench, device_name, peak_bandwidth, peak_extra_memory, quantiles

from semgrpo.ops import (
    group_advantages,
    group_advantages_torch,
    grpo_loss,
    grpo_loss_torch,
    semantic_reward,
    semantic_reward_torch,
    token_logprobs,
    token_logprobs_torch,
)
from semgrpo.ops._dispatch import interpreter_enabled


def _liger_grpo():
    """Liger's logits-level GRPO loss and its per-token log-prob kernel, or (None, None)."""
    try:
        from liger_kernel.ops.grpo_loss import fused_selective_log_softmax
        from liger_kernel.transformers.grpo_loss import triton_grpo_loss
    except Exception as exc:  # not installed or incompatible
        print(f"liger-kernel: not available ({type(exc).__name__}: {exc})")
        return None, None
    return triton_grpo_loss, fused_selective_log_softmax


def triton_runs_on(device: str) -> bool:
    """Whether the Triton providers can run on ``device``: compiled on CUDA, or under the interpreter."""
    return device == "cuda" or interpreter_enabled()


class Runner:
    def __init__(self, writer: CsvWriter, rep: int):
        self.w, self.rep = writer, rep
        self.peak = peak_bandwidth(writer.device)
        self.summary: list[str] = []

    def case(self, op, provider, mode, shape, fn, *, nbytes=None, setup=None, eager_ms=None, rep=None):
        """Time ``fn``, record all metrics; returns p50 ms or None when the provider failed."""
        try:
            times = bench(fn, setup=setup, rep=rep or self.rep)
            mem = peak_extra_memory(fn, setup=setup)
        except Exception as exc:  # OOM, compile failure, ...: record nothing, say why
            print(f"  {op} {provider} {mode} {shape}: FAILED {type(exc).__name__}: {str(exc)[:200]}")
            torch.cuda.empty_cache() if torch.cuda.is_available() else None
            return None
        p50, p20, p80 = quantiles(times)
        self.w.add(op, provider, mode, "time", "ms", shape, p50, p20, p80)
        line = f"  {op:15s} {provider:13s} {mode:8s} {shape:28s} {p50:9.3f} ms"
        if nbytes:
            gbs = [nbytes / (t * 1e-3) / 1e9 for t in (p50, p80, p20)]  # p20 of bandwidth = p80 of time
            self.w.add(op, provider, mode, "bandwidth", "GB/s", shape, *gbs)
            line += f" {gbs[0]:8.0f} GB/s"
            if self.peak:
                pct = [100 * g * 1e9 / self.peak for g in gbs]
                self.w.add(op, provider, mode, "pct_peak_bw", "%", shape, *pct)
                line += f" ({pct[0]:4.1f}% peak)"
        if eager_ms:
            self.w.add(op, provider, mode, "speedup_vs_eager", "x", shape, eager_ms / p50, eager_ms / p80,
                       eager_ms / p20)
            line += f"  {eager_ms / p50:6.2f}x eager"
        if mem == mem:
            self.w.add(op, provider, mode, "peak_extra_mem", "MB", shape, mem / 2**20)
            line += f"  +{mem / 2**20:9.1f} MB"
        print(line, flush=True)
        self.w.write()  # keep what we have if a later case is killed
        return p50


def _providers_fn(name, compiled_cache, fn):
    if name != "compile":
        return fn
    if fn not in compiled_cache:
        compiled_cache[fn] = torch.compile(fn, dynamic=False)
    return compiled_cache[fn]


def bench_grpo(run: Runner, shapes, providers, dtype, device):
    liger, liger_logps = _liger_grpo() if "liger" in providers else (None, None)
    tri = triton_runs_on(device)
    compiled = {}
    for N, V in shapes:
        T = 256 if N >= 256 else N
        B = N // T
        shape = f"N={N},V={V},{str(dtype).split('.')[-1]}"
        g = torch.Generator(device=device).manual_seed(0)
        full = torch.randn(B, T + 1, V, device=device, dtype=dtype, generator=g)
        ids = torch.randint(0, V, (B, T), device=device, generator=g)
        mask = torch.ones(B, T, device=device)  # full mask: every row is read (and written), as counted
        adv = torch.randn(B, device=device)
        with torch.no_grad():
            lp = token_logprobs(full[:, :-1], ids, backend="triton" if device == "cuda" else "torch")
        old, ref = lp + 0.05, lp - 0.05
        kw = dict(beta=0.04, loss_type="grpo")
        elem = full.element_size()
        fwd_bytes, fb_bytes = N * V * elem, 2 * N * V * elem  # one read (+ one write) of the logits
        x = full[:, :-1].contiguous()
        del full
        keep = x.clone() if "ours_inplace" in providers else None
        eager = {}
        for mode in ("fwd", "fwd+bwd"):
            for prov in providers:
                if prov == "liger" and liger is None:
                    continue
                if prov == "ours_inplace" and mode == "fwd":
                    continue
                if prov in ("ours", "ours_inplace") and not tri:
                    continue
                leaf = x if prov != "liger" else None
                if prov == "liger":
                    leaf = torch.cat([x, x[:, -1:]], dim=1)  # Liger takes [B, T+1, V] and drops the last
                leaf.requires_grad_(mode == "fwd+bwd")

                def call(prov=prov, leaf=leaf, mode=mode):
                    if prov == "liger":
                        loss, _ = liger(leaf, old, ref, ids, adv, mask, temperature=1.0, beta=0.04, eps_low=0.2,
                                        eps_high=0.2, inplace=True, loss_type="grpo", reduce=True)
                    elif prov in ("ours", "ours_inplace"):
                        loss, _ = grpo_loss(leaf, ids, mask, adv, old, ref, inplace_grad=prov == "ours_inplace",
                                            backend="triton", **kw)
                    else:
                        f = _providers_fn(prov, compiled, grpo_loss_torch)
                        loss, _ = f(leaf, ids, mask, adv, old, ref, **kw)
                    if mode == "fwd+bwd":
                        loss.backward()

                def setup(prov=prov, leaf=leaf):
                    leaf.grad = None
                    if prov in ("ours_inplace", "liger"):
                        with torch.no_grad():
                            leaf[:, : x.shape[1]].copy_(keep if keep is not None else x)

                def fn(call=call, mode=mode):
                    if mode == "fwd":
                        with torch.no_grad():
                            call()
                    else:
                        call()

                ms = run.case("grpo_loss", prov, mode, shape, fn, setup=setup,
                              nbytes=fwd_bytes if mode == "fwd" else fb_bytes, eager_ms=eager.get(mode),
                              rep=10 if prov in ("eager", "compile") else None)
                if prov == "eager" and ms:
                    eager[mode] = ms
                leaf.requires_grad_(False)
                leaf.grad = None
                if prov == "ours_inplace":
                    with torch.no_grad():
                        x.copy_(keep)  # the in-place run left gradients in x
                del leaf
                gc.collect()
                torch.cuda.empty_cache() if device == "cuda" else None
        # forward-only per-token log-probs (old/ref pass), same shapes
        e = run.case("token_logprobs", "eager", "fwd", shape, lambda: token_logprobs_torch(x, ids), nbytes=fwd_bytes,
                     rep=5)
        if tri:
            run.case("token_logprobs", "ours", "fwd", shape, lambda: token_logprobs(x, ids, backend="triton"),
                     nbytes=fwd_bytes, eager_ms=e)
        if liger_logps is not None:
            xl = torch.cat([x, x[:, -1:]], dim=1)  # Liger takes [B, T+1, V] and drops the last position
            run.case("token_logprobs", "liger", "fwd", shape, lambda: liger_logps(xl, ids, 1.0, mask),
                     nbytes=fwd_bytes, eager_ms=e)
            del xl
        x = keep = None  # free this shape's logits before the next one
        gc.collect()
        torch.cuda.empty_cache() if device == "cuda" else None


def bench_small_ops(run: Runner, providers, device, *, n_groups, G, N_emb, D, dtype):
    compiled = {}
    r = torch.randn(n_groups * G, device=device)
    r[::7] = float("nan")
    shape = f"B={n_groups},G={G}"
    eager = None
    for prov in providers:
        if prov in ("liger", "ours_inplace") or (prov == "ours" and not triton_runs_on(device)):
            continue
        if prov == "ours":
            fn = lambda: group_advantages(r, G, backend="triton")
        else:
            f = _providers_fn(prov, compiled, group_advantages_torch)
            fn = lambda f=f: f(r, G)
        ms = run.case("group_advantages", prov, "fwd", shape, fn, nbytes=8 * r.numel(), eager_ms=eager, rep=100)
        eager = ms if prov == "eager" else eager
    c = torch.randn(N_emb, D, device=device, dtype=dtype)
    ref = torch.randn(N_emb, D, device=device, dtype=dtype)
    lang = torch.rand(N_emb, device=device) > 0.5
    shape = f"N={N_emb},D={D},{str(dtype).split('.')[-1]}"
    nbytes = 2 * c.numel() * c.element_size() + 9 * N_emb
    eager = None
    for prov in providers:
        if prov in ("liger", "ours_inplace") or (prov == "ours" and not triton_runs_on(device)):
            continue
        if prov == "ours":
            fn = lambda: semantic_reward(c, ref, lang, tau=0.3, backend="triton")
        else:
            f = _providers_fn(prov, compiled, semantic_reward_torch)
            fn = lambda f=f: f(c, ref, lang, tau=0.3)
        ms = run.case("semantic_reward", prov, "fwd", shape, fn, nbytes=nbytes, eager_ms=eager, rep=50)
        eager = ms if prov == "eager" else eager


def tune_grpo(N: int, V: int, rep: int) -> None:
    """Sweep (BLOCK_V, num_warps, programs/SM) of the grpo_loss kernel, fwd+bwd in place, bf16; print only."""
    from semgrpo.ops import _grpo_kernel

    B, T = N // 256, 256
    x = torch.randn(B, T, V, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    ids = torch.randint(0, V, (B, T), device="cuda")
    mask, adv = torch.ones(B, T, device="cuda"), torch.randn(B, device="cuda")
    old = ref = torch.zeros(B, T, device="cuda") - 10.0
    peak = peak_bandwidth(device_name())
    for cfg in [(b, w, k) for b in (2048, 4096, 8192) for w in (8, 16, 32) for k in (1, 2, 3, 0)]:
        _grpo_kernel.LAUNCH_OVERRIDE = cfg

        def fn():
            loss, _ = grpo_loss(x, ids, mask, adv, old, ref, beta=0.04, inplace_grad=True, backend="triton")
            loss.backward()

        def setup():
            x.grad = None

        try:
            p50, _, _ = quantiles(bench(fn, setup=setup, rep=rep, warmup=2))
        except Exception as exc:
            print(f"cfg {cfg}: FAILED {type(exc).__name__}: {str(exc)[:120]}")
            continue
        gbs = 4 * N * V / (p50 * 1e-3) / 1e9
        print(f"cfg block={cfg[0]} warps={cfg[1]} per_sm={cfg[2]}: {p50:.3f} ms {gbs:.0f} GB/s "
              f"({100 * gbs * 1e9 / peak if peak else float('nan'):.1f}% of peak)", flush=True)
    _grpo_kernel.LAUNCH_OVERRIDE = None
    # forward only (no grad)
    x.requires_grad_(False)
    for cfg in [(2048, 8, 0), (4096, 8, 0), (4096, 16, 0), (8192, 16, 0), (4096, 8, 2)]:
        _grpo_kernel.LAUNCH_OVERRIDE = cfg
        p50, _, _ = quantiles(bench(lambda: grpo_loss(x, ids, mask, adv, old, ref, beta=0.04, backend="triton"),
                                    rep=rep, warmup=2))
        gbs = 2 * N * V / (p50 * 1e-3) / 1e9
        print(f"fwd cfg {cfg}: {p50:.3f} ms {gbs:.0f} GB/s ({100 * gbs * 1e9 / peak:.1f}% of peak)", flush=True)
    _grpo_kernel.LAUNCH_OVERRIDE = None
    x = None  # free the logits
    from semgrpo.ops import reward as reward_mod

    c = torch.randn(32768, 1024, device="cuda", dtype=torch.bfloat16)
    r = torch.randn_like(c)
    lang = torch.ones(32768, device="cuda")
    for cfg in [(256, 8192, 4), (1024, 4096, 4), (1024, 4096, 8), (1024, 8192, 8), (512, 4096, 4), (1024, 2048, 4)]:
        reward_mod.LAUNCH_OVERRIDE = cfg
        p50, _, _ = quantiles(bench(lambda: semantic_reward(c, r, lang, tau=0.3, backend="triton"), rep=50))
        gbs = 2 * c.numel() * 2 / (p50 * 1e-3) / 1e9
        print(f"semantic cfg {cfg}: {p50 * 1e3:.1f} us {gbs:.0f} GB/s", flush=True)
    reward_mod.LAUNCH_OVERRIDE = None


FULL_SHAPES = "4096x32000,4096x151936,16384x32000,16384x151936"
SMOKE_SHAPES = "512x1000"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true",
                   help="small shapes on CPU: torch eager, plus ours and Liger under TRITON_INTERPRET=1")
    p.add_argument("--out", type=Path, default=None, help="CSV folder (default benchmarks/results)")
    p.add_argument("--providers", default="eager,ours,ours_inplace,compile,liger")
    p.add_argument("--ops", default="grpo_loss,small")
    p.add_argument("--shapes", default=None,
                   help=f"NxV list for grpo_loss (default {FULL_SHAPES}; with --smoke {SMOKE_SHAPES})")
    p.add_argument("--rep", type=int, default=20)
    p.add_argument("--tune", action="store_true", help="sweep grpo_loss launch configs at the last shape, print only")
    bench_fused_linear.add_args(p)
    args = p.parse_args(argv)
    if args.fused_linear:
        return bench_fused_linear.run(args)
    if args.tune:
        N, V = (int(v) for v in (args.shapes or FULL_SHAPES).split(",")[-1].split("x"))
        tune_grpo(N, V, args.rep)
        return 0
    cuda = torch.cuda.is_available()
    smoke = args.smoke or not cuda
    device = "cuda" if cuda and not smoke else "cpu"
    providers = [s for s in args.providers.split(",") if s]
    shapes = [tuple(int(v) for v in s.split("x")) for s in (args.shapes or (SMOKE_SHAPES if smoke else FULL_SHAPES))
              .split(",")]
    if smoke:
        runnable = ("eager", "ours", "ours_inplace", "liger") if triton_runs_on(device) else ("eager",)
        providers = [q for q in providers if q in runnable] or ["eager"]
        small = dict(n_groups=64, G=8, N_emb=512, D=256)
    else:
        small = dict(n_groups=4096, G=8, N_emb=32768, D=1024)
    dev = device_name() if device == "cuda" else "cpu"
    tag = dev.replace(" ", "_").replace("/", "_")
    name = f"bench_kernels_{tag}{'_smoke' if smoke else ''}.csv"
    out = (args.out or Path(__file__).resolve().parent / "results") / name
    writer = CsvWriter(out)
    run = Runner(writer, 3 if smoke else args.rep)
    print(f"device={dev} peak_bw={run.peak} providers={providers} smoke={smoke}")
    dtype = torch.bfloat16
    ops = args.ops.split(",")
    if "grpo_loss" in ops:
        bench_grpo(run, shapes, providers, dtype, device)
    if "small" in ops:
        bench_small_ops(run, providers, device, dtype=dtype, **small)
    print(f"wrote {writer.write()} ({len(writer.rows)} rows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
