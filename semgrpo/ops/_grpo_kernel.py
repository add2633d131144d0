"""Triton kernels and autograd wrappers behind :func:`semgrpo.ops.grpo_loss`.

Two autograd Functions share one backward kernel (``_softmax_grad_kernel``):

* ``_GRPOLossFunction`` (``grpo_loss_triton``), the fully fused loss for grpo/bnpo/dr_grpo/dapo at token
  level without delta, bias-corrected KL, vLLM IS ratio or entropy. Every aggregation there is linear in
  the per-token loss with a weight known in advance, so its forward kernel finishes the loss in-kernel: one
  program per token row (or a persistent grid, see ``_launch_config``) streams the row's V logits once with
  an online logsumexp in fp32 (``_online_lse.row_logp``, the loop ``token_logprobs`` runs too); the
  per-token loss and ``d loss / d logp`` follow from the scalar ``logp``. Per row it keeps two fp32
  scalars, ``lse`` and ``coef = w * dl/dlogp / temperature``; nothing [N, V] is written.
* ``_LogpEntropyFunction`` (``logp_entropy_triton``), differentiable per-token ``(logp, entropy)`` of
  ``softmax(logits / temperature)`` for every other configuration: its forward streams each unmasked row
  once (the same ``row_logp``, carrying the entropy's accumulator when the entropy is asked for) and keeps
  ``lse`` and the entropy per row; the loss math then runs in torch on [B, T]
  tensors (``policy_loss.policy_loss_from_logps``), whose autograd hands back ``g_lp = d loss / d logp`` and
  ``g_ent = d loss / d entropy``.

Backward: ``_softmax_grad_kernel`` re-reads the logits and writes
``d loss / d logits = a * (onehot - p) - c * p * (log p + H)`` per row, with ``a = g_lp / temperature``
(for the fused loss ``grad_output * coef``) and ``c = g_ent / temperature`` (0 without entropy), computed
in fp32 and rounded once to the logits' dtype, into a fresh buffer or, with ``inplace_grad``, into the
logits buffer itself. Applying ``grad_output`` (DeepSpeed's loss scale, 1/accumulation) before that
rounding keeps fp16 entries around ``w * p / T`` (below fp16's 6e-8 subnormal floor before scaling) from
flushing to zero, and the backward neither syncs the host nor allocates a second [N, V] tensor. Rows with
``a = c = 0`` (masked, clipped without KL, grad_output 0) are zero-filled without reading the logits. By
construction either Function moves 2 reads + 1 write of the logits.

An earlier layout wrote the gradient in the forward (a second, reversed sweep meant to re-read the row
from L2) and multiplied it by ``grad_output`` in the backward (one more read and write when it was not 1).
On H100 with V=151936 that re-read mostly missed L2 (a 297 KB row times the rows in flight exceeds it),
so its traffic was also ~2 reads + 1 write, see benchmarks/results. The split layout here has not been
timed on a GPU yet.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

try:
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the install
    triton = None


if triton is not None:
    from ._online_lse import row_logp

    @triton.jit
    def _persistent_row(it, T, x_ptr, s_xb, s_xt):
        """Iteration `it` of a persistent program: program p of P handles rows p, p + P, p + 2P, ...
        Returns the flat row, its (b, t) and the address of its logits."""
        row = tl.program_id(0).to(tl.int64) + it * tl.num_programs(0).to(tl.int64)
        b = row // T
        t = row % T
        return row, b, t, x_ptr + b * s_xb + t * s_xt

    @triton.jit
    def _grpo_loss_fwd_kernel(
        x_ptr, ids_ptr, m_ptr, w_ptr, adv_ptr, old_ptr, ref_ptr, out_ptr,
        N, T, V,
        s_xb, s_xt, s_xv, s_ib, s_it, s_ab, s_at,
        inv_temp, lo, hi, beta,
        HAS_OLD: tl.constexpr, HAS_REF: tl.constexpr, USE_KL: tl.constexpr, BLOCK_V: tl.constexpr,
    ):
        # out holds 6 planes of N fp32: w*loss, kl, clipped-low, clipped-high, lse, coef (0 when masked).
        for it in range(0, tl.cdiv(N - tl.program_id(0), tl.num_programs(0))):
            row, b, t, xb = _persistent_row(it, T, x_ptr, s_xb, s_xt)
            on = tl.load(m_ptr + row).to(tl.float32) != 0.0
            if on:
                tok = tl.load(ids_ptr + b * s_ib + t * s_it).to(tl.int64)
                logp, lse, _ = row_logp(xb, tok, s_xv, V, inv_temp, False, BLOCK_V)
                # clipped surrogate: l = -min(r*A, clip(r, lo, hi)*A), r = exp(logp - old)
                if HAS_OLD:
                    old = tl.load(old_ptr + row).to(tl.float32)
                else:
                    old = logp
                ratio = tl.exp(logp - old)
                A = tl.load(adv_ptr + b * s_ab + t * s_at).to(tl.float32)
                p1 = ratio * A
                p2 = tl.minimum(tl.maximum(ratio, lo), hi) * A
                loss = -tl.minimum(p1, p2)
                # d l / d logp = -A*r on the unclipped branch, 0 where the clipped branch is active
                dlogp = tl.where(p1 <= p2, -p1, 0.0)
                kl = 0.0
                if HAS_REF:
                    # k3 = exp(ref - logp) - (ref - logp) - 1 ; d k3 / d logp = 1 - exp(ref - logp)
                    d = tl.load(ref_ptr + row).to(tl.float32) - logp
                    ed = tl.exp(d)
                    kl = ed - d - 1.0
                    if USE_KL:
                        loss = loss + beta * kl
                        dlogp = dlogp + beta * (1.0 - ed)
                w = tl.load(w_ptr + row).to(tl.float32)
                tl.store(out_ptr + row, w * loss)
                tl.store(out_ptr + N + row, kl)
                tl.store(out_ptr + 2 * N + row, ((ratio < lo) & (A < 0.0)).to(tl.float32))
                tl.store(out_ptr + 3 * N + row, ((ratio > hi) & (A > 0.0)).to(tl.float32))
                tl.store(out_ptr + 4 * N + row, lse)
                tl.store(out_ptr + 5 * N + row, w * dlogp * inv_temp)
            else:
                for k in range(0, 6):
                    tl.store(out_ptr + k * N + row, 0.0)

    @triton.jit
    def _logp_entropy_fwd_kernel(
        x_ptr, ids_ptr, m_ptr, logp_ptr, lse_ptr, ent_ptr,
        N, T, V,
        s_xb, s_xt, s_xv, s_ib, s_it,
        inv_temp,
        WITH_ENT: tl.constexpr, BLOCK_V: tl.constexpr,
    ):
        # per row: logp, lse and (WITH_ENT) the entropy, fp32; masked rows are not read and hold 0.
        for it in range(0, tl.cdiv(N - tl.program_id(0), tl.num_programs(0))):
            row, b, t, xb = _persistent_row(it, T, x_ptr, s_xb, s_xt)
            on = tl.load(m_ptr + row).to(tl.float32) != 0.0
            if on:
                tok = tl.load(ids_ptr + b * s_ib + t * s_it).to(tl.int64)
                logp, lse, ent = row_logp(xb, tok, s_xv, V, inv_temp, WITH_ENT, BLOCK_V)
                tl.store(logp_ptr + row, logp)
                tl.store(lse_ptr + row, lse)
                tl.store(ent_ptr + row, ent)
            else:
                tl.store(logp_ptr + row, 0.0)
                tl.store(lse_ptr + row, 0.0)
                tl.store(ent_ptr + row, 0.0)

    @triton.jit
    def _softmax_grad_kernel(
        x_ptr, g_ptr, ids_ptr, lse_ptr, a_ptr, c_ptr, ent_ptr,
        N, T, V,
        s_xb, s_xt, s_xv, s_gb, s_gt, s_gv, s_ib, s_it,
        inv_temp,
        HAS_ENT: tl.constexpr, BLOCK_V: tl.constexpr,
    ):
        # g = a * (onehot - p) - c * p * (log p + H), p = softmax(x / temp), in fp32 up to the one cast to
        # g's dtype; a, c per row (c and H only with HAS_ENT). g may alias x (inplace_grad): each block is
        # read before the same addresses are written.
        cols = tl.arange(0, BLOCK_V)
        for it in range(0, tl.cdiv(N - tl.program_id(0), tl.num_programs(0))):
            row, b, t, xb = _persistent_row(it, T, x_ptr, s_xb, s_xt)
            gb = g_ptr + b * s_gb + t * s_gt
            a = tl.load(a_ptr + row)
            if HAS_ENT:
                c = tl.load(c_ptr + row)
                live = (a != 0.0) | (c != 0.0)
            else:
                c = 0.0
                live = a != 0.0
            if live:  # NaN (bad id) passes and spreads over the row, as in torch
                lse = tl.load(lse_ptr + row)
                tok = tl.load(ids_ptr + b * s_ib + t * s_it).to(tl.int64)
                tok = tl.where((tok >= 0) & (tok < V), tok, 0)
                if HAS_ENT:
                    H = tl.load(ent_ptr + row)
                for v0 in range(0, V, BLOCK_V):
                    v = v0 + cols
                    x = tl.load(xb + v * s_xv, mask=v < V, other=float("-inf"),
                                eviction_policy="evict_first").to(tl.float32) * inv_temp
                    lp = x - lse
                    p = tl.exp(lp)
                    g = a * (tl.where(v == tok, 1.0, 0.0) - p)
                    if HAS_ENT:
                        g = g - c * p * tl.where(p > 0.0, lp + H, 0.0)  # padding lanes: 0, not 0 * -inf
                    tl.store(gb + v * s_gv, g.to(g_ptr.dtype.element_ty), mask=v < V,
                             eviction_policy="evict_first")
            else:  # masked, clipped without KL, or grad_output 0: no need to read the logits
                zero = tl.zeros([BLOCK_V], tl.float32).to(g_ptr.dtype.element_ty)
                for v0 in range(0, V, BLOCK_V):
                    v = v0 + cols
                    tl.store(gb + v * s_gv, zero, mask=v < V)


# (BLOCK_V, num_warps, programs per SM, 0 = one program per row) for every kernel here; benchmarks and tests
# set it (tests force a small BLOCK_V so that the interpreter runs many vocabulary blocks).
LAUNCH_OVERRIDE: tuple[int, int, int] | None = None


def _launch_config(N: int, V: int, device: torch.device, *, backward: bool = False) -> tuple[int, int, int]:
    """(BLOCK_V, num_warps, grid size) for N rows of V logits."""
    # Measured on H100 at N=16384, V=151936, bf16, with the earlier layout (module docstring):
    # its forward-only variant, the same single sweep as this forward, took 2.13 ms (70% of peak) with
    # (2048, 8, one program per row) and 2.69 ms with (4096, 8); for its fused forward + gradient sweep
    # (2048, 16, one program per row) was the best of 36 configs (persistent grids, 1-3 programs/SM, did
    # not make the re-read hit L2). The split backward kernel reuses that config; it is not re-tuned, nor is
    # the logp/entropy forward, which borrows the fused forward's.
    default = (2048, 16, 0) if backward else (2048, 8, 0)
    block, warps, per_sm = LAUNCH_OVERRIDE or default
    block = min(block, triton.next_power_of_2(V))
    warps = min(warps, max(1, block // 64))
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        grid = min(N, sms * per_sm) if per_sm > 0 else N
    else:  # interpreter: programs run one after another, the grid size does not matter
        grid = min(N, 8)
    return block, warps, grid


def _softmax_grad(x, ids, lse, a, c, ent, temperature, inplace_grad):
    """``d / d logits`` of per-row coefficients (``_softmax_grad_kernel``): a fresh [B, T, V] buffer in the
    logits' dtype, or `x` itself with `inplace_grad` (its version is bumped, so that a second backward
    through the same graph, or any other node that saved these logits, raises instead of reading
    gradients)."""
    B, T, V = x.shape
    N = B * T
    g = x if inplace_grad else torch.empty((B, T, V), dtype=x.dtype, device=x.device)
    if N > 0:
        block, warps, grid = _launch_config(N, V, x.device, backward=True)
        has_ent = c is not None
        _softmax_grad_kernel[(grid,)](
            x, g, ids, lse, a, c if has_ent else a, ent if has_ent else a,
            N, T, V,
            x.stride(0), x.stride(1), x.stride(2), g.stride(0), g.stride(1), g.stride(2),
            ids.stride(0), ids.stride(1),
            1.0 / temperature,
            HAS_ENT=has_ent, BLOCK_V=block, num_warps=warps,
        )
    if inplace_grad:
        torch.autograd.graph.increment_version(x)
    return g


class _GRPOLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, ids, m, w, adv, old, ref, temperature, eps_low, eps_high, beta, inplace_grad):
        B, T, V = logits.shape
        N = B * T
        x = logits.detach()
        out = torch.empty(6 * N, dtype=torch.float32, device=logits.device)
        adv2 = adv.float()
        s_ab, s_at = (adv2.stride(0), 0) if adv2.dim() == 1 else (adv2.stride(0), adv2.stride(1))
        old_c = old.float().contiguous() if old is not None else out
        ref_c = ref.float().contiguous() if ref is not None else out
        if N > 0:
            block, warps, grid = _launch_config(N, V, logits.device)
            _grpo_loss_fwd_kernel[(grid,)](
                x, ids, m, w, adv2, old_c, ref_c, out,
                N, T, V,
                x.stride(0), x.stride(1), x.stride(2), ids.stride(0), ids.stride(1), s_ab, s_at,
                1.0 / temperature, 1.0 - eps_low, 1.0 + eps_high, beta,
                HAS_OLD=old is not None, HAS_REF=ref is not None, USE_KL=(ref is not None and beta != 0.0),
                BLOCK_V=block, num_warps=warps,
            )
        parts = out.view(6, N)
        loss = parts[0].sum()
        msum = m.sum().clamp_min(1.0)
        stats = parts[1:4].sum(dim=1) / msum  # kl, low, high (rows with mask 0 hold 0)
        region = (parts[2] + parts[3]).sum() / msum  # low and high are exclusive (A<0 vs A>0)
        stats = torch.cat([stats, region[None]])
        if logits.requires_grad:
            # the logits themselves (version-checked), not a gradient: the backward recomputes softmax
            ctx.save_for_backward(logits, ids, parts[4:])
        ctx.temperature, ctx.inplace_grad = temperature, inplace_grad
        ctx.mark_non_differentiable(stats)
        return loss, stats

    @staticmethod
    def backward(ctx, grad_loss, grad_stats):
        nones = (None,) * 11
        if not ctx.needs_input_grad[0]:
            return (None, *nones)
        logits, ids, rows = ctx.saved_tensors
        a = rows[1] * grad_loss.detach().float()  # grad_output folded in before the one rounding
        g = _softmax_grad(logits.detach(), ids, rows[0], a, None, None, ctx.temperature, ctx.inplace_grad)
        return (g, *nones)


class _LogpEntropyFunction(torch.autograd.Function):
    """(logp, entropy) [B, T] fp32 of ``softmax(logits / temperature)`` at `ids`; rows with ``m == 0`` are
    not read, hold the constant 0 and get a zero gradient."""

    @staticmethod
    def forward(ctx, logits, ids, m, temperature, with_entropy, inplace_grad):
        B, T, V = logits.shape
        N = B * T
        x = logits.detach()
        logp, lse, ent = (torch.empty(B, T, dtype=torch.float32, device=x.device) for _ in range(3))
        if N > 0:
            block, warps, grid = _launch_config(N, V, x.device)
            _logp_entropy_fwd_kernel[(grid,)](
                x, ids, m, logp, lse, ent,
                N, T, V,
                x.stride(0), x.stride(1), x.stride(2), ids.stride(0), ids.stride(1),
                1.0 / temperature,
                WITH_ENT=bool(with_entropy), BLOCK_V=block, num_warps=warps,
            )
        if logits.requires_grad:
            ctx.save_for_backward(logits, ids, m, lse, ent)  # logits version-checked, as _GRPOLossFunction
        ctx.temperature, ctx.inplace_grad, ctx.with_entropy = temperature, inplace_grad, bool(with_entropy)
        ctx.set_materialize_grads(False)
        if not with_entropy:
            ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    @once_differentiable
    def backward(ctx, g_lp, g_ent):
        nones = (None,) * 5
        if not ctx.needs_input_grad[0]:
            return (None, *nones)
        logits, ids, m, lse, ent = ctx.saved_tensors
        if not ctx.with_entropy:
            g_ent = None
        # per-row coefficients of the kernel, 0 on masked rows (constants of this Function)
        on = m != 0
        inv_t = 1.0 / ctx.temperature
        a = torch.zeros_like(lse) if g_lp is None else torch.where(on, g_lp.float() * inv_t, 0.0).contiguous()
        c = None if g_ent is None else torch.where(on, g_ent.float() * inv_t, 0.0).contiguous()
        g = _softmax_grad(logits.detach(), ids, lse, a, c, ent, ctx.temperature, ctx.inplace_grad)
        return (g, *nones)


def grpo_loss_triton(logits, ids, mask, w, adv, old, ref, *, temperature, eps_low, eps_high, beta,
                     inplace_grad):
    """Run the fully fused loss kernels (gradient in the backward); inputs already validated by
    :func:`semgrpo.ops.grpo_loss`, which calls this only for the configurations it covers.

    Shape:
        logits: [B, T, V], ids/mask/w/old/ref: [B, T], adv: [B] or [B, T] -> loss: []
    """
    if triton is None:  # pragma: no cover
        raise RuntimeError("triton is not installed")
    m = mask.float().contiguous()
    loss, stats = _GRPOLossFunction.apply(
        logits, ids, m, w.float().contiguous(), adv, old, ref,
        temperature, eps_low, eps_high, beta, inplace_grad,
    )
    names = ("kl", "clip_ratio_low", "clip_ratio_high", "clip_ratio_region")
    return loss, {k: stats[i].detach() for i, k in enumerate(names)}


def logp_entropy_triton(logits, ids, mask, *, temperature, with_entropy, inplace_grad):
    """Differentiable per-token ``(logp, entropy)`` of ``softmax(logits / temperature)``, 0 where `mask` is 0
    (those rows are never read; any id may sit there). The entropy is non-differentiable zeros without
    `with_entropy`. With `inplace_grad` the backward writes ``d / d logits`` into the logits buffer. Inputs
    already validated by :func:`semgrpo.ops.grpo_loss`.

    Shape:
        logits: [B, T, V], ids/mask: [B, T] -> logp, entropy: [B, T] fp32
    """
    if triton is None:  # pragma: no cover
        raise RuntimeError("triton is not installed")
    return _LogpEntropyFunction.apply(logits, ids, mask.float().contiguous(), float(temperature),
                                      bool(with_entropy), bool(inplace_grad))
