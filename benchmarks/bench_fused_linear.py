"""GRPO loss from hidden states, forward + backward: ours vs TRL's chunked log-probs, Liger and torch eager.

Run through ``python benchmarks/bench_kernels.py --fused-linear`` (flags under "fused-linear GRPO loss").
Every method gets the same inputs (hidden [B, T, H], LM-head weight [V, H], sampled ids, a full mask, one
advantage per sequence, old and reference log-probs) and computes the gradients of hidden and weight:

* ``ours``: :func:`semgrpo.ops.linear_grpo_loss`;
* ``trl_chunked``: TRL's ``ChunkedLogProbFunction`` (the kernel behind its fused LM head; log-probs and
  entropy, as its GRPO trainer asks for) with the GRPO loss below on top, in torch;
* ``liger``: Liger-Kernel's ``LigerFusedLinearGRPOLoss`` (its torch path, ``compiled=False``);
* ``eager``: ``hidden @ weight.T`` materialised, ``log_softmax``, ``gather``, the GRPO loss below.

Errors are max |x - ref| against the same eager computation in fp32 (inputs upcast), run once beforehand; in
an fp32 run the ``eager`` row therefore shows only run-to-run differences.

``% of matmul peak`` (on by default on CUDA, ``--fl-matmul-peak`` elsewhere): one forward+backward is counted
as 8*N*H*V FLOPs for every method (four [N, H] x [H, V] products: the logits, their recomputation in the
backward, the gradients of hidden and weight; a method that keeps the logits does three of them, and is
counted the same, so the figures rank times). That count over the call's time is compared with the FLOP rate
of one ``torch.mm`` of the same shape and dtype (``hidden @ weight.T``), timed in the same run.
"""

from __future__ import annotations

import argparse
import gc
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from common import CsvWriter, bench, device_name, peak_extra_memory, quantiles

METHODS = ("ours", "trl_chunked", "liger", "eager")
# (B, T, H, V): tokens N = B * T
DEFAULT_SHAPE = {"cpu": (4, 1024, 1024, 151936), "cuda": (16, 1024, 2560, 151936)}
DEFAULT_DTYPE = {"cpu": "float32", "cuda": "bfloat16"}
SMOKE_SHAPE = (2, 32, 64, 1000)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# the issue's acceptance ratios: ours' peak extra memory <= 1/8 of eager's and <= TRL's; time <= 1.2x TRL's
TARGET_MEM_VS_EAGER, TARGET_MEM_VS_TRL, TARGET_TIME_VS_TRL = 1 / 8, 1.0, 1.2


@dataclass(frozen=True)
class LossConfig:
    """GRPO settings shared by every method. TRL 1.16's defaults except beta (TRL: 0.0), kept > 0 so that the
    KL term and the reference log-probs are part of what is measured."""

    loss_type: str = "dapo"
    beta: float = 0.04
    eps_low: float = 0.2
    eps_high: float = 0.2
    use_bias_correction_kl: bool = True
    temperature: float = 1.0


def add_args(p) -> None:
    g = p.add_argument_group("fused-linear GRPO loss (--fused-linear)")
    g.add_argument("--fused-linear", action="store_true",
                   help="benchmark the GRPO loss from hidden states (ours, TRL chunked, Liger, eager) instead")
    g.add_argument("--fl-shape", default=None, metavar="BxTxHxV",
                   help="batch x completion length x hidden x vocab (default 4x1024x1024x151936 on CPU, "
                        "16x1024x2560x151936 on CUDA; with --smoke 2x32x64x1000)")
    g.add_argument("--fl-dtype", choices=sorted(DTYPES), default=None,
                   help="hidden/weight dtype (default float32 on CPU, bfloat16 on CUDA)")
    g.add_argument("--fl-device", choices=("auto", "cpu", "cuda"), default="auto")
    g.add_argument("--fl-methods", default=",".join(METHODS), help=f"comma list out of {','.join(METHODS)}")
    g.add_argument("--fl-rep", type=int, default=None, help="timed calls per method (default 3 CPU, 10 CUDA)")
    g.add_argument("--fl-warmup", type=int, default=1, help="untimed calls per method first")
    g.add_argument("--fl-loss-type", choices=("dapo", "grpo"), default="dapo", help="dapo is TRL 1.16's default")
    g.add_argument("--fl-beta", type=float, default=LossConfig.beta)
    g.add_argument("--fl-trl-chunk", type=int, default=None,
                   help="vocabulary chunk of TRL's kernel (default: the one its fused LM head uses, 32768)")
    g.add_argument("--fl-matmul-peak", action=argparse.BooleanOptionalAction, default=None,
                   help="time torch.mm of the same shape and give each method's %% of its FLOP rate "
                        "(default: on for CUDA, off on CPU)")


# ---- the loss every torch-side method shares ----------------------------------------------------------------


def grpo_loss_from_logps(logp, mask, adv, old, ref, cfg: LossConfig) -> torch.Tensor:
    """TRL 1.16 ``GRPOTrainer._compute_loss`` for token-level importance sampling, no delta, no vLLM correction,
    one process and no gradient accumulation (so dapo's normaliser ``num_items_in_batch`` is the mask sum)."""
    m = mask.to(logp.dtype)
    ratio = torch.exp(logp - old)
    a = adv[:, None]
    per_token = -torch.minimum(ratio * a, ratio.clamp(1 - cfg.eps_low, 1 + cfg.eps_high) * a)
    if cfg.beta != 0.0:
        gap = ref - logp
        kl = torch.exp(gap) - gap - 1  # k3 estimator of KL(policy || reference)
        per_token = per_token + cfg.beta * (kl * ratio if cfg.use_bias_correction_kl else kl)
    if cfg.loss_type == "grpo":
        return ((per_token * m).sum(-1) / m.sum(-1).clamp(min=1.0)).mean()
    return (per_token * m).sum() / m.sum().clamp(min=1.0)


def eager_logps(h, w, ids, temperature: float) -> torch.Tensor:
    """Per-token log-probs through the full [N, V] logits (fp32 from the matmul on)."""
    logits = (h @ w.t()).float()
    if temperature != 1.0:
        logits = logits / temperature
    return torch.log_softmax(logits, -1).gather(-1, ids[..., None]).squeeze(-1)


@torch.no_grad()
def _chunked_logps_f32(h, w, ids, temperature, rows=512):
    """fp32 log-probs without grad, a few rows at a time (inputs for old/ref log-probs only)."""
    out = torch.empty(ids.shape, dtype=torch.float32, device=h.device)
    h2, o2, i2 = h.reshape(-1, h.shape[-1]), out.view(-1), ids.reshape(-1)
    wf = w.float()
    for r in range(0, h2.shape[0], rows):
        o2[r : r + rows] = eager_logps(h2[r : r + rows].float(), wf, i2[r : r + rows], temperature)
    return out


# ---- the methods: each maps (hidden leaf, weight leaf) to a scalar loss ----------------------------------------


def _trl_chunk_default() -> int:
    try:
        from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

        return int(_CHUNKED_LOGPROB_CHUNK_SIZE)
    except Exception:
        return 32768  # TRL 1.16's value


def build_methods(names, batch, cfg: LossConfig, trl_chunk: int | None):
    """{name: fn(h, w) -> loss} for the methods that import; prints why one is left out."""
    ids, mask, adv, old, ref = batch["ids"], batch["mask"], batch["adv"], batch["old"], batch["ref"]
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown} (choose from {', '.join(METHODS)})")
    out = {}
    for name in names:
        try:
            if name == "ours":
                from semgrpo.ops import linear_grpo_loss

                def fn(h, w, f=linear_grpo_loss):
                    return f(h, w, ids, mask, adv, old, ref, temperature=cfg.temperature, eps_low=cfg.eps_low,
                             eps_high=cfg.eps_high, beta=cfg.beta, loss_type=cfg.loss_type,
                             use_bias_correction_kl=cfg.use_bias_correction_kl)[0]
            elif name == "trl_chunked":
                from trl.kernels import ChunkedLogProbFunction

                chunk = trl_chunk or _trl_chunk_default()

                def fn(h, w, f=ChunkedLogProbFunction, chunk=chunk):
                    # (hidden, weight, bias, targets, temperature, chunk_size, softcap, logit_scale, outputs)
                    logp = f.apply(h.reshape(-1, h.shape[-1]), w, None, ids.reshape(-1), cfg.temperature, chunk,
                                   None, 1.0, ("entropy",))[0]
                    return grpo_loss_from_logps(logp.view(ids.shape), mask, adv, old, ref, cfg)
            elif name == "liger":
                from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

                mod = LigerFusedLinearGRPOLoss(
                    beta=cfg.beta, compiled=False, use_ref_model=cfg.beta != 0.0, epsilon_low=cfg.eps_low,
                    epsilon_high=cfg.eps_high, loss_type=cfg.loss_type, temperature=cfg.temperature,
                    use_bias_correction_kl=cfg.use_bias_correction_kl)

                def fn(h, w, mod=mod):
                    return mod(h, w, ids, mask, adv, ref_per_token_logps=ref if cfg.beta != 0.0 else None,
                               old_per_token_logps=old)[0]
            else:  # eager
                def fn(h, w):
                    return grpo_loss_from_logps(eager_logps(h, w, ids, cfg.temperature), mask, adv, old, ref, cfg)
        except Exception as exc:  # not installed, or fails to import here
            print(f"  {name}: not available ({type(exc).__name__}: {exc})")
            continue
        out[name] = fn
    return out


# ---- measuring ---------------------------------------------------------------------------------------------------


def cpu_peak_extra_memory(fn, *, setup=None) -> float:
    """Peak bytes of CPU tensor memory allocated during one call of ``fn`` and alive at the same moment.

    How: ``torch.profiler`` with ``profile_memory=True`` makes c10's CPU allocator report each allocation and
    free (pointer, bytes) to the profiler. Replaying those events in time order and counting only blocks
    allocated inside the call gives the high-water mark of the bytes the call added: the CPU counterpart of
    ``torch.cuda.max_memory_allocated()`` minus the baseline. It covers every tensor (forward intermediates,
    what autograd saves, gradient buffers, the results left in ``.grad``), but not what libraries take with
    their own malloc (oneDNN/MKL scratch) or Python objects. RSS was not used: it also moves with the
    allocator's caching and with untouched pages, and a sampling thread misses short peaks and takes a core.
    The profiler slows the call, so this is a separate, untimed call. nan when the profiler gives no events.
    """
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    if setup:
        setup()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        ev = stack.pop()
        stack.extend(ev.children)
        if ev.tag == _EventType.Allocation and ev.extra_fields.device.type == "cpu":
            events.append((ev.start_time_ns, ev.extra_fields.ptr, ev.extra_fields.alloc_size))
    if not events:
        return float("nan")
    live, cur, peak = {}, 0, 0
    for _, ptr, size in sorted(events, key=lambda e: e[0]):
        if size > 0:
            live[ptr] = size
            cur += size
            peak = max(peak, cur)
        elif ptr in live:  # frees of blocks from before the call are not the call's
            cur -= live.pop(ptr)
    return float(peak)


def _max_err(x, ref) -> float:
    return float("nan") if x is None else float((x.detach().float() - ref).abs().max())


def _measure(name, loss_fn, h, w, ref, *, rep, warmup, device):
    """Times fwd+bwd, measures its peak extra memory, and compares loss and grads with ``ref``."""
    last = {}

    def setup():
        h.grad = w.grad = None

    def fn():
        loss = loss_fn(h, w)
        loss.backward()
        last["loss"] = loss.detach()

    times = bench(fn, setup=setup, rep=rep, warmup=warmup)
    # the memory call runs last, so the loss and grads it leaves are the ones compared
    mem = peak_extra_memory(fn, setup=setup) if device == "cuda" else cpu_peak_extra_memory(fn, setup=setup)
    res = dict(times=times, mem=mem, err_loss=abs(float(last["loss"]) - ref["loss"]),
               err_gh=_max_err(h.grad, ref["gh"]), err_gw=_max_err(w.grad, ref["gw"]))
    setup()
    return res


def make_batch(B, T, H, V, dtype, device, cfg: LossConfig, seed=0):
    """Random inputs with LM-like logits (std about 3) and old/ref log-probs near the policy's, so that some
    ratios leave the clip range and the KL term is non-trivial."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g)
    weight = torch.randn(V, H, generator=g) * (3.0 / math.sqrt(H))
    ids = torch.randint(0, V, (B, T), generator=g)
    adv = torch.randn(B, generator=g)
    noise_old, noise_ref = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    hidden, weight = hidden.to(device, dtype), weight.to(device, dtype)
    ids, adv = ids.to(device), adv.to(device)
    lp = _chunked_logps_f32(hidden, weight, ids, cfg.temperature)
    return dict(hidden=hidden, weight=weight, ids=ids, mask=torch.ones(B, T, device=device), adv=adv,
                old=lp + 0.15 * noise_old.to(device), ref=lp + 0.1 * noise_ref.to(device))


def reference(batch, cfg: LossConfig):
    """Loss and fp32 grads of the eager method on fp32 copies of hidden and weight."""
    h = batch["hidden"].detach().float().requires_grad_(True)
    w = batch["weight"].detach().float().requires_grad_(True)
    loss = grpo_loss_from_logps(eager_logps(h, w, batch["ids"], cfg.temperature), batch["mask"], batch["adv"],
                                batch["old"], batch["ref"], cfg)
    loss.backward()
    return dict(loss=float(loss.detach()), gh=h.grad, gw=w.grad)


def matmul_rate(batch, *, rep: int, warmup: int) -> dict:
    """Time ``hidden @ weight.T`` ([N, H] x [H, V] in the inputs' dtype): p50/p20/p80 ms and FLOP/s at the p50."""
    h = batch["hidden"].reshape(-1, batch["hidden"].shape[-1])
    w = batch["weight"]
    times = bench(lambda: torch.mm(h, w.t()), rep=rep, warmup=warmup)
    p50, p20, p80 = quantiles(times)
    return dict(ms=(p50, p20, p80), flops=2 * h.shape[0] * h.shape[1] * w.shape[0] / (p50 * 1e-3))


def fwd_bwd_flops(N: int, H: int, V: int) -> int:
    """The work counted for one forward+backward: four [N, H] x [H, V] products."""
    return 8 * N * H * V


# ---- the run -----------------------------------------------------------------------------------------------------


def run(args) -> int:
    dev_choice = args.fl_device
    device = ("cuda" if torch.cuda.is_available() else "cpu") if dev_choice == "auto" else dev_choice
    if args.fl_shape:
        B, T, H, V = (int(v) for v in args.fl_shape.lower().split("x"))
    else:
        B, T, H, V = SMOKE_SHAPE if args.smoke else DEFAULT_SHAPE[device]
    dtype = DTYPES[args.fl_dtype or DEFAULT_DTYPE[device]]
    rep = args.fl_rep or (2 if args.smoke else 3 if device == "cpu" else 10)
    cfg = LossConfig(loss_type=args.fl_loss_type, beta=args.fl_beta)
    names = [s for s in args.fl_methods.split(",") if s]
    dev = device_name() if device == "cuda" else "cpu"
    dt = str(dtype).split(".")[-1]
    N = B * T
    shape = f"B={B},T={T},N={N},H={H},V={V},{dt}"
    tag = dev.replace(" ", "_").replace("/", "_")
    out = (args.out or Path(__file__).resolve().parent / "results") / (
        f"bench_kernels_fused_linear_{tag}{'_smoke' if args.smoke else ''}.csv")
    writer = CsvWriter(out)
    writer.device = dev
    print(f"fused-linear GRPO loss fwd+bwd: device={dev} threads={torch.get_num_threads()} {shape} "
          f"loss_type={cfg.loss_type} beta={cfg.beta} rep={rep} warmup={args.fl_warmup}", flush=True)

    batch = make_batch(B, T, H, V, dtype, device, cfg)
    ref = reference(batch, cfg)
    gc.collect()
    print(f"  fp32 eager reference: loss={ref['loss']:.6g} max|grad_hidden|={float(ref['gh'].abs().max()):.3g} "
          f"max|grad_weight|={float(ref['gw'].abs().max()):.3g}", flush=True)
    mm = None
    if args.fl_matmul_peak if args.fl_matmul_peak is not None else device == "cuda":
        mm = matmul_rate(batch, rep=rep, warmup=args.fl_warmup)
        writer.add("matmul", "torch.mm", "fwd", "time", "ms", shape, *mm["ms"])
        writer.add("matmul", "torch.mm", "fwd", "tflops", "TFLOP/s", shape, mm["flops"] / 1e12)
        writer.write()
        print(f"  torch.mm [N, H] x [H, V] {dt}: {mm['ms'][0]:.3f} ms, {mm['flops'] / 1e12:.1f} TFLOP/s", flush=True)
        gc.collect()
    methods = build_methods(names, batch, cfg, args.fl_trl_chunk)
    results = {}
    for name, loss_fn in methods.items():
        h = batch["hidden"].detach().requires_grad_(True)  # leaves sharing the inputs' storage: no copy
        w = batch["weight"].detach().requires_grad_(True)
        try:
            r = _measure(name, loss_fn, h, w, ref, rep=rep, warmup=args.fl_warmup, device=device)
        except Exception as exc:  # OOM, an API change, ...: say why, keep the others
            print(f"  {name}: FAILED {type(exc).__name__}: {str(exc)[:300]}", flush=True)
            continue
        finally:
            del h, w
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
        p50, p20, p80 = quantiles(r["times"])
        r["ms"] = p50
        results[name] = r
        op, mode = "linear_grpo_loss", "fwd+bwd"
        writer.add(op, name, mode, "time", "ms", shape, p50, p20, p80)
        writer.add(op, name, mode, "peak_extra_mem", "MB", shape, r["mem"] / 2**20)
        writer.add(op, name, mode, "max_abs_err_loss", "abs", shape, r["err_loss"])
        writer.add(op, name, mode, "max_abs_err_grad_hidden", "abs", shape, r["err_gh"])
        writer.add(op, name, mode, "max_abs_err_grad_weight", "abs", shape, r["err_gw"])
        r["pct_mm"] = float("nan")
        if mm is not None:
            pct = [100 * fwd_bwd_flops(N, H, V) / (t * 1e-3) / mm["flops"] for t in (p50, p80, p20)]
            writer.add(op, name, mode, "pct_matmul_peak", "%", shape, *pct)
            r["pct_mm"] = pct[0]
        writer.write()  # keep what we have if a later method is killed
        print(f"  {name:12s} {p50:10.1f} ms  +{r['mem'] / 2**20:9.1f} MB  err loss {r['err_loss']:.2e} "
              f"grad_hidden {r['err_gh']:.2e} grad_weight {r['err_gw']:.2e}"
              + (f"  {r['pct_mm']:.1f}% of matmul peak" if mm is not None else ""), flush=True)

    print()
    print("| method | device | dtype | N | H | V | fwd+bwd ms (p50) | % of matmul peak | peak extra MB "
          "| max abs err loss | grad_hidden | grad_weight |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        print(f"| {name} | {dev} | {dt} | {N} | {H} | {V} | {r['ms']:.1f} | {r['pct_mm']:.1f} "
              f"| {r['mem'] / 2**20:.1f} | {r['err_loss']:.2e} | {r['err_gh']:.2e} | {r['err_gw']:.2e} |")
    print()
    _ratios(results, writer, shape)
    print(f"wrote {writer.write()} ({len(writer.rows)} rows)")
    return 0


def _ratios(results, writer, shape) -> None:
    """The issue's checks of ours against eager and TRL's chunked path, printed and kept as CSV rows."""
    ours = results.get("ours")
    if ours is None:
        print("ratios: no result for ours")
        return
    checks = []
    if "eager" in results:
        checks.append(("mem_ratio_vs_eager", "peak extra memory ours / eager", ours["mem"] / results["eager"]["mem"],
                       TARGET_MEM_VS_EAGER))
    if "trl_chunked" in results:
        trl = results["trl_chunked"]
        checks.append(("mem_ratio_vs_trl_chunked", "peak extra memory ours / TRL chunked", ours["mem"] / trl["mem"],
                       TARGET_MEM_VS_TRL))
        checks.append(("time_ratio_vs_trl_chunked", "fwd+bwd time ours / TRL chunked", ours["ms"] / trl["ms"],
                       TARGET_TIME_VS_TRL))
    for metric, text, value, target in checks:
        ok = "n/a" if value != value else "ok" if value <= target else "NOT MET"
        print(f"{text}: {value:.3f} (target <= {target:.3g}): {ok}")
        writer.add("linear_grpo_loss", "ours", "fwd+bwd", metric, "x", shape, value)
