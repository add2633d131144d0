"""Fused GRPO loss: clipped importance-ratio surrogate + k3 KL on completion logits.

Semantics follow TRL/Liger number for number (DESIGN section 5)::

    logp   = log_softmax(logits / temperature)[id]
    ratio  = exp(logp - old)                       old = logp.detach() when absent
    l_t    = -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A) + beta * k3
    k3     = exp(ref - logp) - (ref - logp) - 1
    grpo   : mean_b( sum_t m*l_t / sum_t m )     bnpo: sum m*l_t / sum m
    dr_grpo: sum m*l_t / (B * max_completion_length)
    dapo   : sum m*l_t / num_items_in_batch (falls back to sum m)

Every aggregation is linear in ``l_t``: ``loss = sum_bt w_bt * l_t`` with a weight ``w`` known
before the kernel runs, so the Triton forward reduces each row to two scalars (its logsumexp and
``w * dl/dlogp``) from which the backward writes ``d loss / d logits`` in one pass.
"""

from __future__ import annotations

import torch

from ._dispatch import check_float_tensor, check_positive, use_triton
from ._grpo_kernel import grpo_loss_triton

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")


def _validate(logits, ids, mask, adv, old, ref, temperature, eps_low, eps_high, beta, loss_type,
              max_completion_length, num_items_in_batch):
    check_float_tensor("logits", logits, ndim=3)
    B, T, _ = logits.shape
    if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int64, torch.int32):
        got = getattr(ids, "dtype", type(ids).__name__)
        raise TypeError(f"completion_ids must be an int64/int32 tensor, got {got}")
    if tuple(ids.shape) != (B, T):
        raise ValueError(f"completion_ids shape {tuple(ids.shape)} must be logits.shape[:2] = {(B, T)}")
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (B, T):
        raise ValueError(f"completion_mask must be a tensor of shape {(B, T)}, got {getattr(mask, 'shape', mask)}")
    if mask.is_complex():
        raise TypeError(f"completion_mask must be bool, integer or float, got {mask.dtype}")
    check_float_tensor("advantages", adv, ndim=(1, 2))
    if tuple(adv.shape) not in ((B,), (B, T)):
        raise ValueError(f"advantages shape {tuple(adv.shape)} must be {(B,)} or {(B, T)}")
    for name, t in (("old_logps", old), ("ref_logps", ref)):
        if t is not None:
            check_float_tensor(name, t, ndim=2)
            if tuple(t.shape) != (B, T):
                raise ValueError(f"{name} shape {tuple(t.shape)} must be {(B, T)}")
    for name, t in (("completion_ids", ids), ("completion_mask", mask), ("advantages", adv),
                    ("old_logps", old), ("ref_logps", ref)):
        if t is not None and t.device != logits.device:
            raise ValueError(f"{name} is on {t.device} but logits on {logits.device}")
    check_positive("temperature", temperature)
    for name, e in (("eps_low", eps_low), ("eps_high", eps_high)):
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not 0 <= e < float("inf"):
            raise ValueError(f"{name} must be a finite number >= 0, got {e!r}")
    if eps_low >= 1:
        raise ValueError(f"eps_low must be < 1 so that 1 - eps_low > 0, got {eps_low!r}")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < float("inf"):
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
    if beta > 0 and ref is None:
        raise ValueError(f"beta={beta} > 0 needs ref_logps (got None)")
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if max_completion_length is not None and (
        isinstance(max_completion_length, bool) or not isinstance(max_completion_length, int)
        or max_completion_length < 1
    ):
        raise ValueError(f"max_completion_length must be an int >= 1 or None, got {max_completion_length!r}")
    if num_items_in_batch is not None and not isinstance(num_items_in_batch, torch.Tensor) and (
            isinstance(num_items_in_batch, bool) or not isinstance(num_items_in_batch, (int, float))
            or not num_items_in_batch > 0):
            raise ValueError(f"num_items_in_batch must be a number > 0, a tensor or None, got {num_items_in_batch!r}")


def _masked_mean(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return (x * m).sum() / m.sum().clamp_min(1.0)


def grpo_loss_torch(
    logits, completion_ids, completion_mask, advantages, old_logps=None, ref_logps=None, *,
    temperature=1.0, eps_low=0.2, eps_high=0.2, beta=0.0, loss_type="grpo",
    max_completion_length=None, num_items_in_batch=None,
):
    """Torch reference of :func:`grpo_loss` (same arguments and results; materializes fp32 logits)."""
    _validate(logits, completion_ids, completion_mask, advantages, old_logps, ref_logps, temperature,
              eps_low, eps_high, beta, loss_type, max_completion_length, num_items_in_batch)
    B, T, _ = logits.shape
    m = completion_mask.float()
    on = m != 0
    x = logits.float() / temperature
    logp = x.gather(-1, completion_ids.long().unsqueeze(-1)).squeeze(-1) - torch.logsumexp(x, dim=-1)
    # masked tokens get neutral inputs so garbage there (padding, -inf) never reaches the loss
    old = logp.detach() if old_logps is None else torch.where(on, old_logps.float(), logp.detach())
    A = advantages.float()
    A = A[:, None] if A.dim() == 1 else A
    ratio = torch.exp(logp - old)
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    per_tok = -torch.min(ratio * A, clipped * A)
    if ref_logps is not None:
        d = torch.where(on, ref_logps.float(), logp.detach()) - logp
        kl = torch.exp(d) - d - 1
        if beta != 0:
            per_tok = per_tok + beta * kl
        kl_stat = _masked_mean(kl.detach(), m)
    else:
        kl_stat = torch.zeros((), device=logits.device)
    per_tok = torch.where(on, per_tok, 0.0)
    if loss_type == "grpo":
        loss = ((per_tok * m).sum(-1) / m.sum(-1).clamp_min(1.0)).mean()
    elif loss_type == "bnpo":
        loss = (per_tok * m).sum() / m.sum().clamp_min(1.0)
    elif loss_type == "dr_grpo":
        L = T if max_completion_length is None else max_completion_length
        loss = (per_tok * m).sum() / (B * L)
    else:
        denom = m.sum().clamp_min(1.0) if num_items_in_batch is None else num_items_in_batch
        loss = (per_tok * m).sum() / denom
    r = ratio.detach()
    low = ((r < 1 - eps_low) & (A < 0)).float()
    high = ((r > 1 + eps_high) & (A > 0)).float()
    stats = {
        "kl": kl_stat,
        "clip_ratio_low": _masked_mean(low, m),
        "clip_ratio_high": _masked_mean(high, m),
        "clip_ratio_region": _masked_mean(torch.maximum(low, high), m),
    }
    return loss, stats


def token_weights(completion_mask, *, loss_type, max_completion_length=None, num_items_in_batch=None):
    """Per-token weight ``w`` with ``loss = sum(w * l_t)`` for each aggregation.

    Shape:
        completion_mask: [B, T] -> [B, T] fp32
    """
    m = completion_mask.float()
    B, T = m.shape
    if loss_type == "grpo":
        return m / (m.sum(-1, keepdim=True).clamp_min(1.0) * B)
    if loss_type == "bnpo":
        return m / m.sum().clamp_min(1.0)
    if loss_type == "dr_grpo":
        return m / float(B * (T if max_completion_length is None else max_completion_length))
    if num_items_in_batch is None:
        return m / m.sum().clamp_min(1.0)
    if isinstance(num_items_in_batch, torch.Tensor):
        return m / num_items_in_batch.to(device=m.device, dtype=torch.float32)
    return m / float(num_items_in_batch)


def grpo_loss(
    logits: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    advantages: torch.Tensor,
    old_logps: torch.Tensor | None = None,
    ref_logps: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    beta: float = 0.0,
    loss_type: str = "grpo",
    max_completion_length: int | None = None,
    num_items_in_batch: int | float | torch.Tensor | None = None,
    inplace_grad: bool = False,
    backend: str | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO clipped-surrogate loss (+ beta * k3 KL) with its gradient to the logits.

    Args:
        logits: Completion logits, any float dtype, may be a strided view such as
            ``full_logits[:, P-1:-1]``; ``logits[b, t]`` predicts ``completion_ids[b, t]``.
        completion_ids: Sampled token ids (int64/int32).
        completion_mask: 1 for real completion tokens, 0 for padding (bool/int/float).
        advantages: Per-sequence [B] or per-token [B, T] advantages.
        old_logps: Sampling-policy log-probs; ``None`` means ``logp.detach()`` (ratio 1).
        ref_logps: Reference-policy log-probs; required when ``beta > 0``.
        temperature: Divides the logits before the softmax.
        eps_low: Lower clip ``1 - eps_low``.
        eps_high: Upper clip ``1 + eps_high``.
        beta: KL coefficient.
        loss_type: ``"grpo"``, ``"bnpo"``, ``"dr_grpo"`` or ``"dapo"``.
        max_completion_length: dr_grpo denominator length (default T).
        num_items_in_batch: dapo denominator (global token count); default the mask sum.
        inplace_grad: Triton path only: the backward writes the gradient into the logits buffer
            (saves one [B, T, V] allocation; the logits values are destroyed then, so a second
            backward through the same graph, ``retain_graph=True``, raises).
        backend: ``"auto"``/``"triton"``/``"torch"``; default from ``SEMGRPO_OPS``.

    Returns:
        ``(loss, stats)``: fp32 scalar loss, and 0-d detached fp32 tensors ``kl`` (mean k3 over
        unmasked tokens, 0 without ref), ``clip_ratio_low``, ``clip_ratio_high``,
        ``clip_ratio_region`` (fractions of unmasked tokens). No host sync.

    Shape:
        logits: [B, T, V], completion_ids/completion_mask/old_logps/ref_logps: [B, T],
        advantages: [B] or [B, T] -> loss: []
    """
    _validate(logits, completion_ids, completion_mask, advantages, old_logps, ref_logps, temperature,
              eps_low, eps_high, beta, loss_type, max_completion_length, num_items_in_batch)
    if not use_triton(logits, completion_ids, completion_mask, advantages, old_logps, ref_logps,
                      backend=backend):
        return grpo_loss_torch(
            logits, completion_ids, completion_mask, advantages, old_logps, ref_logps,
            temperature=temperature, eps_low=eps_low, eps_high=eps_high, beta=beta, loss_type=loss_type,
            max_completion_length=max_completion_length, num_items_in_batch=num_items_in_batch,
        )
    w = token_weights(completion_mask, loss_type=loss_type, max_completion_length=max_completion_length,
                      num_items_in_batch=num_items_in_batch)
    return grpo_loss_triton(
        logits, completion_ids, completion_mask, w, advantages, old_logps, ref_logps,
        temperature=float(temperature), eps_low=float(eps_low), eps_high=float(eps_high), beta=float(beta),
        inplace_grad=bool(inplace_grad),
    )
