"""GRPO loss straight from hidden states and the LM-head weight, never writing the [N, V] logits.

The loss depends on the logits only through ``logp = z[id] - logsumexp(z)`` (and the entropy, for
logging or a bonus), ``z = (hidden @ weight.T + bias) / temperature``. So a custom autograd Function
streams the vocabulary in chunks to produce those two [N] vectors, and the per-token GRPO math (ratios,
clipping, KL, normalisation: :func:`semgrpo.ops.grpo_loss.policy_loss_from_logps`, shared with the
logits-level op) runs on [B, T] tensors with plain torch autograd.

Chunked torch path (any device):

* forward: for each vocabulary chunk and token chunk, one fp32 tile ``z = h_chunk @ W_chunk.T`` (bf16/fp16
  products are never rounded: CUDA uses ``torch.mm(..., out_dtype=float32)``, elsewhere the operands are
  upcast; autocast is switched off inside), folded into per-row running max, sum-exp, ``sum exp * z``
  (entropy) and the target logit.
* backward: recomputes each tile, turns it into ``d loss / d logits`` =
  ``(g_logp * (onehot - p) - g_ent * p * (log p + H)) / temperature`` in place, and accumulates
  ``grad_hidden += dlogits @ W_chunk`` and ``grad_W_chunk = dlogits.T @ h`` in fp32 (vocabulary chunks
  outermost, so each weight chunk's gradient is complete before it is rounded to the weight's dtype).
  ``grad_W``/``grad_bias`` are computed only when ``weight``/``bias`` require grad (a frozen LM head under
  LoRA skips that matmul).

Peak extra memory: two live [token_chunk, vocab_chunk] fp32 tiles, one fp32 [vocab_chunk, H] weight chunk
(backward), the fp32 [N, H] ``grad_hidden`` accumulator and a few [N] vectors. ``_chunk_sizes`` picks the
chunks from ``TILE_ELEMS``; ``CHUNK_OVERRIDE`` forces them (tests use small ones).

Triton path (``backend``, default Triton when every tensor is on CUDA; ``_linear_kernel``): the same chunk
loop and the same cuBLAS/torch matmuls (they hold nearly all the FLOPs and run at the device's matmul peak),
but the elementwise work on each fp32 tile, 4-6 torch passes over it, becomes one fused kernel: the forward
reads the tile once to update the row state, the backward reads it once and writes dlogits once (plus
deterministic fp32 column sums for ``grad_bias``). With bf16 CUDA weights (``HALF_DLOGITS``) the backward
rounds dlogits to bf16 as the kernel writes them and feeds cuBLAS bf16 operands with fp32 output for
``grad_hidden``/``grad_W``: an fp32 GEMM runs an order of magnitude below the bf16 peak, the rounding is the
one an eager bf16 backward applies to its logits gradient anyway, and the bf16 weight chunk needs no fp32
copy (it holds a bf16 dlogits buffer, half a tile, and fp32 products of at most TILE_ELEMS instead). fp16
keeps fp32 dlogits, since fp16's range would flush the many ``p * g / T`` entries below ~6e-8 to zero; on CPU
(the interpreter) everything stays fp32.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from . import _linear_kernel
from ._dispatch import check_float_tensor, check_positive, use_triton
from .grpo_loss import loss_from_logps
from .loss_options import LossOptions, takes_loss_options
from .policy_loss import check_loss_inputs

TOKEN_CHUNK = 4096
# fp32 elements of one logits tile (32 MiB); the chunked path keeps two tiles alive at a time. Larger tiles
# buy little: at 4096 x 2048 each matmul is already compute-bound, and 128 MiB tiles cost 1/7 of the
# eager path's extra memory at N=4096, V=151936 (benchmarks/results/bench_kernels_fused_linear_cpu.csv).
TILE_ELEMS = 1 << 23
# (token_chunk, vocab_chunk) forcing the chunk sizes, e.g. in tests; None picks them from TILE_ELEMS
CHUNK_OVERRIDE: tuple[int, int] | None = None

# Triton backward with bf16 hidden and weight: round dlogits to bf16 for the backward matmuls (module
# docstring). None = on CUDA only; True/False force it on any device (tests run that code on CPU).
HALF_DLOGITS: bool | None = None

_HALF = (torch.float16, torch.bfloat16)


def _chunk_sizes(n_tokens: int, vocab: int, hidden_size: int) -> tuple[int, int]:
    """(token_chunk, vocab_chunk): a tile of at most TILE_ELEMS fp32 logits, and an fp32 weight chunk
    ([vocab_chunk, H], upcast in the backward) of at most TILE_ELEMS too."""
    if CHUNK_OVERRIDE is not None:
        tok, voc = CHUNK_OVERRIDE
        return max(1, int(tok)), max(1, int(voc))
    tok = max(1, min(TOKEN_CHUNK, n_tokens))
    voc = max(1, min(vocab, TILE_ELEMS // tok, TILE_ELEMS // max(hidden_size, 1)))
    if voc < vocab and voc >= 256:
        voc -= voc % 128
    return tok, voc


def _mm_f32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` as fp32 with fp32 accumulation; half-precision operands are not rounded on the way."""
    if a.is_cuda and a.dtype == b.dtype and a.dtype in _HALF:
        return torch.mm(a, b, out_dtype=torch.float32)
    return torch.mm(a.float(), b.float())


def _addmm_f32(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``acc += a @ b`` with fp32 ``acc``. Half-precision operands take the ``_mm_f32`` route in row slices
    whose fp32 product stays under TILE_ELEMS (the temporary that an out-of-place product needs)."""
    if a.dtype == torch.float32 and b.dtype == torch.float32:
        acc.addmm_(a, b)
        return
    step = max(1, TILE_ELEMS // max(acc.shape[1], 1))
    for r0 in range(0, acc.shape[0], step):
        acc[r0 : r0 + step] += _mm_f32(a[r0 : r0 + step], b)


def _fwd_tile_torch(z, b, ids, v0, temperature, run_max, run_sum, run_acc, target):
    """Fold the raw fp32 tile ``z = h @ W_c.T`` (vocabulary ids ``v0 ..``) into the rows' running max /
    sum-exp / entropy accumulator (None: no entropy) / target logit, fp32 [n] views updated in place.
    Same contract as ``_linear_kernel.fwd_tile``; `z` is clobbered."""
    if b is not None:
        z += b
    if temperature != 1.0:
        z /= temperature
    c = z.shape[1]
    local = ids - v0
    hit = (local >= 0) & (local < c)
    zt = z.gather(1, local.clamp(0, c - 1)[:, None])[:, 0]
    target.copy_(torch.where(hit, zt, target))
    m_new = torch.maximum(run_max, z.amax(1))
    scale = torch.exp(run_max - m_new)  # 0 on the first chunk (max -inf)
    z -= m_new[:, None]
    e = torch.exp(z)
    if run_acc is not None:  # sum e^(z-max) (z-max), re-centred on the new max
        shift = torch.where(torch.isfinite(run_max), run_max - m_new, 0.0)
        run_acc.copy_(scale * (run_acc + shift * run_sum) + z.mul_(e).sum(1))
    run_sum.mul_(scale).add_(e.sum(1))
    run_max.copy_(m_new)


def _bwd_tile_torch(z, out, b, ids, v0, temperature, lse, ent, g_lp, g_ent, want_gb):
    """Turn the raw fp32 tile `z` into ``d loss / d logits`` in place (`out` must be `z`); returns its fp32
    column sum when `want_gb`. Same contract as ``_linear_kernel.bwd_tile``."""
    assert out is z
    inv_t = 1.0 / temperature
    if b is not None:
        z += b
    if temperature != 1.0:
        z /= temperature
    z -= lse[:, None]  # log p
    if g_ent is None:
        d = z.exp_().mul_((-inv_t * g_lp)[:, None])
    else:
        # d/dz of g_lp*logp + g_ent*H = g_lp*(onehot - p) - g_ent*p*(log p + H)
        p = torch.exp(z)
        d = z.add_(ent[:, None]).mul_(g_ent[:, None]).add_(g_lp[:, None]).mul_(p).mul_(-inv_t)
        del p
    c = d.shape[1]
    local = ids - v0
    hit = (local >= 0) & (local < c)
    d.scatter_add_(1, local.clamp(0, c - 1)[:, None], torch.where(hit, inv_t * g_lp, 0.0)[:, None])
    return d.sum(0) if want_gb else None


def _half_dlogits(h2: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the Triton backward rounds dlogits to bf16 for its two matmuls (bf16 hidden and weight)."""
    on = weight.is_cuda if HALF_DLOGITS is None else bool(HALF_DLOGITS)  # tests force it on CPU
    return on and weight.dtype == torch.bfloat16 and h2.dtype == weight.dtype


def _fwd_chunks(h2, weight, bias, ids, temperature, with_entropy, triton=False):
    """Streams the vocabulary: per row returns (logp, lse, entropy or None), all fp32 [N]. `triton` swaps the
    per-tile elementwise step for the fused kernel; the matmuls and the loop are the same."""
    N, V = h2.shape[0], weight.shape[0]
    dev = h2.device
    tok, voc = _chunk_sizes(N, V, h2.shape[1])
    step = _linear_kernel.fwd_tile if triton else _fwd_tile_torch
    run_max = torch.full((N,), float("-inf"), dtype=torch.float32, device=dev)
    run_sum = torch.zeros(N, dtype=torch.float32, device=dev)
    run_acc = torch.zeros(N, dtype=torch.float32, device=dev) if with_entropy else None
    target = torch.zeros(N, dtype=torch.float32, device=dev)
    ids = ids.long().contiguous()
    for v0 in range(0, V, voc):
        w_t = weight[v0 : v0 + voc].t()
        b = None if bias is None else bias[v0 : v0 + voc].float()
        for n0 in range(0, N, tok):
            rows = slice(n0, n0 + tok)
            z = _mm_f32(h2[rows], w_t)
            step(z, b, ids[rows], v0, temperature, run_max[rows], run_sum[rows],
                 None if run_acc is None else run_acc[rows], target[rows])
            del z
    log_s = torch.log(run_sum)
    lse = run_max + log_s
    ent = log_s - run_acc / run_sum if with_entropy else None
    return target - lse, lse, ent


def _bwd_chunks(h2, weight, bias, ids, temperature, lse, ent, g_lp, g_ent, need_h, need_w, need_b, triton=False):
    """Gradients (hidden [N, H], weight [V, H], bias [V]; None where not needed) of
    ``sum(g_lp * logp) + sum(g_ent * entropy)``."""
    N, H = h2.shape
    V = weight.shape[0]
    dev = h2.device
    tok, voc = _chunk_sizes(N, V, H)
    step = _linear_kernel.bwd_tile if triton else _bwd_tile_torch
    half = triton and _half_dlogits(h2, weight)
    ids = ids.long().contiguous()
    gl = torch.zeros(N, dtype=torch.float32, device=dev) if g_lp is None else g_lp.float().contiguous()
    ge = None if g_ent is None else g_ent.float().contiguous()
    gh = torch.zeros(N, H, dtype=torch.float32, device=dev) if need_h else None
    gw = torch.empty_like(weight) if need_w else None
    gb = torch.empty_like(bias) if need_b else None
    for v0 in range(0, V, voc):
        w_c = weight[v0 : v0 + voc]
        c = w_c.shape[0]
        w_t = w_c.t()
        w_m = (w_c if half else w_c.float()) if need_h else None  # right operand of dlogits @ W_c
        b = None if bias is None else bias[v0 : v0 + voc].float()
        gw_c = torch.zeros(c, H, dtype=torch.float32, device=dev) if need_w else None
        gb_c = torch.zeros(c, dtype=torch.float32, device=dev) if need_b else None
        for n0 in range(0, N, tok):
            rows = slice(n0, n0 + tok)
            h = h2[rows]
            z = _mm_f32(h, w_t)
            d = torch.empty(z.shape, dtype=weight.dtype, device=dev) if half else z
            col_sum = step(z, d, b, ids[rows], v0, temperature, lse[rows], None if ge is None else ent[rows],
                           gl[rows], None if ge is None else ge[rows], need_b)
            del z
            if need_h:
                _addmm_f32(gh[rows], d, w_m)
            if need_w:
                _addmm_f32(gw_c, d.t(), h if half else h.float())
            if need_b:
                gb_c += col_sum
            del d
        if need_w:
            gw[v0 : v0 + c] = gw_c
        if need_b:
            gb[v0 : v0 + c] = gb_c
    return (None if gh is None else gh.to(h2.dtype)), gw, gb


class _LinearLogprobEntropy(torch.autograd.Function):
    """(logp, entropy) [N] fp32 of ``softmax((h2 @ weight.T + bias) / temperature)`` at ``ids``."""

    @staticmethod
    def forward(ctx, h2, weight, bias, ids, temperature, with_entropy, triton):
        # autocast (e.g. TRL's accelerator.autocast()) would run the chunk matmuls in bf16: keep them fp32
        with torch.autocast(h2.device.type, enabled=False):
            logp, lse, ent = _fwd_chunks(h2, weight, bias, ids, temperature, with_entropy, triton)
        ctx.save_for_backward(h2, weight, bias, ids, lse, ent)
        ctx.temperature, ctx.triton = temperature, triton
        ctx.set_materialize_grads(False)
        if ent is None:
            ent = torch.zeros_like(logp)
            ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    @once_differentiable
    def backward(ctx, g_lp, g_ent):
        h2, weight, bias, ids, lse, ent = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        nones = (None,) * 4
        if ent is None:
            g_ent = None
        if (g_lp is None and g_ent is None) or not (need_h or need_w or need_b):
            return None, None, None, *nones
        with torch.autocast(h2.device.type, enabled=False):
            gh, gw, gb = _bwd_chunks(h2, weight, bias, ids, ctx.temperature, lse, ent, g_lp, g_ent,
                                     need_h, need_w, need_b and bias is not None, ctx.triton)
        return gh, gw, gb, *nones


def _check_head(hidden, weight, bias, *, hidden_ndim):
    check_float_tensor("hidden", hidden, ndim=hidden_ndim)
    check_float_tensor("weight", weight, ndim=2)
    if weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight shape {tuple(weight.shape)} must be [V, H] with H = hidden.shape[-1] = "
                         f"{hidden.shape[-1]}")
    if weight.shape[0] < 1:
        raise ValueError(f"weight must have at least one row (vocabulary entry), got shape {tuple(weight.shape)}")
    if weight.device != hidden.device:
        raise ValueError(f"weight is on {weight.device} but hidden on {hidden.device}")
    if bias is not None:
        check_float_tensor("bias", bias, ndim=1)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias shape {tuple(bias.shape)} must be ({weight.shape[0]},) = weight.shape[:1]")
        if bias.device != hidden.device:
            raise ValueError(f"bias is on {bias.device} but hidden on {hidden.device}")


def _check_ids_range(name: str, ids: torch.Tensor, vocab: int) -> None:
    if ids.numel() and bool(((ids < 0) | (ids >= vocab)).any()):  # one host sync
        lo, hi = int(ids.min()), int(ids.max())
        raise ValueError(f"{name} must lie in [0, {vocab}) (weight.shape[0]), got values in [{lo}, {hi}]")


def linear_logprobs_and_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor, *, bias: torch.Tensor | None = None,
    temperature: float = 1.0, with_entropy: bool = True, backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable per-token ``(logp, entropy)`` of ``softmax((hidden @ weight.T + bias) / temperature)``.

    The building block of :func:`linear_grpo_loss`, for trainers that need the log-probs and entropies
    themselves (an entropy bonus, entropy masks). Nothing of size [N, V] is stored.

    Args:
        hidden: [..., H] hidden states, any float dtype, may be a strided view.
        weight: [V, H] LM-head weight; its gradient is computed only when it requires grad.
        ids: [...] token ids in ``[0, V)`` (int64/int32).
        bias: Optional [V] LM-head bias.
        temperature: Positive divisor of the logits.
        with_entropy: False skips the entropy (returned as non-differentiable zeros).
        backend: ``"auto"``/``"triton"``/``"torch"`` for the per-tile elementwise work; default from
            ``SEMGRPO_OPS`` (auto: Triton when every tensor is on CUDA).

    Returns:
        fp32 ``logp`` and ``entropy`` of shape ``ids.shape``.
    """
    _check_head(hidden, weight, bias, hidden_ndim=tuple(range(1, 9)))
    if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"ids must be an int64/int32 tensor, got {getattr(ids, 'dtype', type(ids).__name__)}")
    if tuple(ids.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(f"ids shape {tuple(ids.shape)} must equal hidden.shape[:-1] = {tuple(hidden.shape[:-1])}")
    if ids.device != hidden.device:
        raise ValueError(f"ids is on {ids.device} but hidden on {hidden.device}")
    temperature = check_positive("temperature", temperature)
    _check_ids_range("ids", ids, weight.shape[0])
    tri = use_triton(hidden, weight, bias, ids, backend=backend)
    h2 = hidden.reshape(-1, hidden.shape[-1])
    logp, ent = _LinearLogprobEntropy.apply(h2, weight, bias, ids.reshape(-1), temperature, bool(with_entropy), tri)
    return logp.view(ids.shape), ent.view(ids.shape)


def linear_token_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor, *, bias: torch.Tensor | None = None,
    temperature: float = 1.0, backend: str | None = None,
) -> torch.Tensor:
    """Log-probability of each id under ``softmax((hidden @ weight.T + bias) / temperature)``, without grad
    (old-policy and reference log-probs), streamed over vocabulary chunks.

    Shape:
        hidden: [..., H], weight: [V, H], ids: [...] -> [...] fp32
    """
    with torch.no_grad():
        logp, _ = linear_logprobs_and_entropy(hidden, weight, ids, bias=bias, temperature=temperature,
                                              with_entropy=False, backend=backend)
    return logp


@takes_loss_options
def linear_grpo_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    advantages: torch.Tensor,
    old_logps: torch.Tensor | None = None,
    ref_logps: torch.Tensor | None = None,
    *,
    bias: torch.Tensor | None = None,
    vllm_is_ratio: torch.Tensor | None = None,
    num_items_in_batch: int | float | torch.Tensor | None = None,
    return_entropy: bool = False,
    backend: str | None = None,
    options: LossOptions | None = None,
    **option_values,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """TRL 1.16 GRPO loss (every loss type) from hidden states and the LM head, without [N, V] logits.

    Same numbers as TRL 1.16's ``GRPOTrainer._compute_loss`` on logits ``hidden @ weight.T + bias`` divided
    by the temperature (see :func:`semgrpo.ops.policy_loss.policy_loss_from_logps` for the formulas). Only the
    unmasked positions are projected (one host sync to find them); masked positions may hold any id.

    Args:
        hidden: [B, T, H] hidden states, fp32/bf16/fp16, may be a strided view such as
            ``last_hidden[:, P-1:-1]``; ``hidden[b, t]`` predicts ``completion_ids[b, t]``.
        weight: [V, H] LM-head weight; gets a gradient only when it requires grad.
        completion_ids: [B, T] sampled ids (int64/int32), in ``[0, V)`` where the mask is set.
        completion_mask: [B, T] 1 for tokens in the loss, 0 for padding (bool/int/float).
        advantages: [B] or [B, T].
        old_logps: [B, T] sampling-policy log-probs; None means ``logp.detach()`` (ratio 1).
        ref_logps: [B, T] reference log-probs; required when ``beta > 0``.
        bias: Optional [V] LM-head bias.
        vllm_is_ratio: [B, T], [B, 1] or [B] truncated importance-sampling correction multiplied into the
            policy loss (vespo folds it into its gamma weight instead).
        num_items_in_batch: dapo/cispo/vespo denominator (TRL's rescaled ``num_items_in_batch``); default
            the mask sum.
        return_entropy: Also return ``stats["per_token_entropy"]``.
        backend: ``"auto"``/``"triton"``/``"torch"`` for the per-tile elementwise work (the matmuls are
            cuBLAS/torch either way); default from ``SEMGRPO_OPS`` (auto: Triton when every tensor is on CUDA).
        options, **option_values: The loss options, a :class:`~semgrpo.ops.loss_options.LossOptions` and/or its
            fields as keywords (``temperature``, ``eps_low``, ``eps_high``, ``beta``, ``loss_type``,
            ``importance_sampling_level``, ``delta``, ``use_bias_correction_kl``, ``max_completion_length``, the
            sapo temperatures and vespo parameters); keywords win over `options`.

    Returns:
        ``(loss, stats)``: fp32 scalar loss; detached 0-d fp32 ``kl``, ``clip_ratio_low``,
        ``clip_ratio_high``, ``clip_ratio_region``, ``entropy`` (mean over unmasked tokens),
        ``vespo_phi_seq_mean`` for vespo; with `return_entropy`, ``per_token_entropy`` [B, T] fp32 (0 where
        masked), which stays attached to the graph so a caller can add an entropy bonus.
    """
    o = LossOptions.resolve(options, option_values, "linear_grpo_loss")
    _check_head(hidden, weight, bias, hidden_ndim=3)
    B, T, _ = hidden.shape
    check_loss_inputs((B, T), hidden.device, "hidden", completion_ids, completion_mask, advantages, old_logps,
                      ref_logps, vllm_is_ratio, num_items_in_batch, o)
    tri = use_triton(hidden, weight, bias, completion_ids, backend=backend)
    on = completion_mask != 0
    ids_on = completion_ids[on]
    _check_ids_range("completion_ids (where completion_mask is set)", ids_on, weight.shape[0])
    logp_on, ent_on = _LinearLogprobEntropy.apply(hidden[on], weight, bias, ids_on, o.temperature, True, tri)
    zeros = torch.zeros(B, T, dtype=torch.float32, device=hidden.device)
    logp = zeros.masked_scatter(on, logp_on)
    ent = zeros.masked_scatter(on, ent_on)
    return loss_from_logps(logp, ent, completion_mask, advantages, old_logps, ref_logps, vllm_is_ratio,
                           num_items_in_batch, o, bool(return_entropy))
