"""The per-token GRPO math of every TRL 1.16 loss type on given log-probs, and the checks of the loss's inputs.

``policy_loss_from_logps`` is the single home of that math: ``grpo_loss`` (outside its fully fused kernel),
``linear_grpo_loss`` and semgrpo's trainer all call it. Semantics follow TRL 1.16's ``GRPOTrainer._compute_loss``
number for number (README: "What one update optimizes").
"""

from __future__ import annotations

import math

import torch

from ._dispatch import check_float_tensor
from .loss_options import LossOptions, _is_number, takes_loss_options


def check_loss_inputs(shape, device, source, ids, mask, adv, old, ref, vllm_is_ratio, num_items_in_batch,
                      o: LossOptions) -> None:
    """Checks of every argument but the logits / hidden states, whose leading dims are `shape` = (B, T) and which
    live on `device`; `source` names them in messages. The options `o` checked themselves when built."""
    B, T = shape
    if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int64, torch.int32):
        got = getattr(ids, "dtype", type(ids).__name__)
        raise TypeError(f"completion_ids must be an int64/int32 tensor, got {got}")
    if tuple(ids.shape) != (B, T):
        raise ValueError(f"completion_ids shape {tuple(ids.shape)} must be {source}.shape[:2] = {(B, T)}")
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
    if vllm_is_ratio is not None:
        check_float_tensor("vllm_is_ratio", vllm_is_ratio, ndim=(1, 2))
        if tuple(vllm_is_ratio.shape) not in ((B,), (B, 1), (B, T)):
            raise ValueError(f"vllm_is_ratio shape {tuple(vllm_is_ratio.shape)} must be {(B, T)}, {(B, 1)} or {(B,)}")
    for name, t in (("completion_ids", ids), ("completion_mask", mask), ("advantages", adv),
                    ("old_logps", old), ("ref_logps", ref), ("vllm_is_ratio", vllm_is_ratio)):
        if t is not None and t.device != device:
            raise ValueError(f"{name} is on {t.device} but {source} on {device}")
    if o.beta > 0 and ref is None:
        raise ValueError(f"beta={o.beta} > 0 needs ref_logps (got None)")
    if num_items_in_batch is not None and not isinstance(num_items_in_batch, torch.Tensor) and (
            not _is_number(num_items_in_batch) or not num_items_in_batch > 0):
        raise ValueError(f"num_items_in_batch must be a number > 0, a tensor or None, got {num_items_in_batch!r}")


def _masked_mean(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return (x * m).sum() / m.sum().clamp_min(1.0)


def _stat_mean(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """TRL's logged mean: a per-sequence [B, 1] value averages over the B sequences, a per-token one over the
    unmasked tokens."""
    if x.shape[-1] == 1 and m.shape[-1] != 1:
        return x.float().sum() / max(x.shape[0], 1)
    return _masked_mean(x.float(), m)


def _vespo_weights(adv, log_ratio, m, on, is_ratio, o: LossOptions):
    """VESPO's detached gamma weight phi(w) = exp(lambda + k log w - lambda w) of the sequence ratio
    w = exp(sum_t m*clamp(log r_t, +-20) [+ sum_t log is_t]), log w clamped to [log 1e-8, 20]; per sequence
    [B, 1] (or [B, T] with per-token advantages, whose sign picks k and lambda)."""
    floor = math.log(1e-8)
    with torch.no_grad():
        s = (log_ratio.clamp(-20.0, 20.0) * m).sum(-1, keepdim=True)
        if is_ratio is not None:
            log_is = torch.log(is_ratio).clamp(floor, 20.0)
            if log_is.shape[-1] != 1:
                log_is = torch.where(on, log_is, 0.0)  # masked tokens contribute ratio 1
            s = s + log_is.sum(-1, keepdim=True)
        log_w = s.clamp(floor, 20.0)
        nonneg = adv >= 0
        k = torch.where(nonneg, o.vespo_k_pos, o.vespo_k_neg)
        lam = torch.where(nonneg, o.vespo_lambda_pos, o.vespo_lambda_neg).clamp(min=1e-4)
        phi = torch.exp(lam + k * log_w - lam * torch.exp(log_w))
        return phi.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


@takes_loss_options
def policy_loss_from_logps(logp, completion_mask, advantages, old_logps=None, ref_logps=None, *, vllm_is_ratio=None,
                           num_items_in_batch=None, entropy=None, options: LossOptions | None = None,
                           **option_values):
    """TRL 1.16 ``GRPOTrainer._compute_loss`` on given per-token log-probs (plain torch autograd through `logp`).

    Options: `options` and/or keywords of :class:`LossOptions` (``temperature`` is not applied: `logp` is already
    tempered). Tensors are validated by the caller (``check_loss_inputs``). With ``r = exp(logp - old)`` (token
    level) or ``exp(sum_t m*(logp - old) / sum_t m)`` per sequence (``"sequence"``):

    * clip types (grpo/bnpo/dr_grpo/dapo/luspo): ``-min(min(r, delta) * A, clip(r, 1-eps_low, 1+eps_high) * A)``
    * cispo: ``-min(r, eps_high).detach() * A * logp``
    * sapo: ``-sigmoid(tau * (r - 1)) * 4 / tau * A``, ``tau = sapo_temperature_pos if A > 0 else _neg``
    * vespo: ``-phi(w).detach() * A * logp`` (see ``_vespo_weights``; ``vllm_is_ratio`` enters phi there)

    then ``* vllm_is_ratio`` (all but vespo), ``+ beta * k3`` with ``k3 = exp(ref - logp) - (ref - logp) - 1``
    (``* r`` when ``use_bias_correction_kl``), and ``loss = sum_bt token_weights * l_bt``. Masked tokens get
    neutral old/ref/vllm_is_ratio values so garbage there never reaches the loss or its gradient.

    Returns:
        ``(loss, stats)``: fp32 scalar and detached 0-d fp32 stats ``kl`` (0 without ref), ``clip_ratio_low``,
        ``clip_ratio_high``, ``clip_ratio_region`` (for cispo: the fraction with ``r > eps_high`` and ``A > 0`` as
        ``clip_ratio_high``/``region``; 0 for sapo/vespo), ``vespo_phi_seq_mean`` for vespo, and ``entropy`` (masked
        mean) when `entropy` is given.
    """
    o = LossOptions.resolve(options, option_values, "policy_loss_from_logps")
    m = completion_mask.float()
    on = m != 0
    lp_d = logp.detach()
    old = lp_d if old_logps is None else torch.where(on, old_logps.float(), lp_d)
    A = advantages.float()
    A = A[:, None] if A.dim() == 1 else A
    isr = None
    if vllm_is_ratio is not None:
        isr = vllm_is_ratio.float()
        isr = isr[:, None] if isr.dim() == 1 else isr
        if isr.shape[-1] != 1:
            isr = torch.where(on, isr, 1.0)
    log_ratio = logp - old
    if o.importance_sampling_level == "token":
        log_w = log_ratio
    else:
        log_w = (log_ratio * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp_min(1.0)
    coef_1 = torch.exp(log_w)

    kl = None
    if ref_logps is not None:
        d = torch.where(on, ref_logps.float(), lp_d) - logp
        kl = torch.exp(d) - d - 1
        if o.use_bias_correction_kl:
            kl = kl * coef_1

    zero = torch.zeros((), device=logp.device)
    low = high = None
    extra = {}
    if o.loss_type == "cispo":
        per_tok = -torch.clamp(coef_1, max=o.eps_high).detach() * A * logp
        high = (coef_1.detach() > o.eps_high) & (A > 0)
    elif o.loss_type == "sapo":
        tau = torch.where(A > 0, o.sapo_temperature_pos, o.sapo_temperature_neg)
        per_tok = -(torch.sigmoid(tau * (coef_1 - 1)) * 4 / tau) * A
    elif o.loss_type == "vespo":
        phi = _vespo_weights(A, log_ratio.detach(), m, on, isr, o)
        per_tok = -phi * A * logp
        extra["vespo_phi_seq_mean"] = _stat_mean(phi, m)
    else:
        coef_2 = torch.clamp(coef_1, 1 - o.eps_low, 1 + o.eps_high)
        if o.delta is not None:
            coef_1 = torch.clamp(coef_1, max=o.delta)  # TRL's clip stats below see this clamped ratio too
        per_tok = -torch.min(coef_1 * A, coef_2 * A)
        r = coef_1.detach()
        low = (r < 1 - o.eps_low) & (A < 0)
        high = (r > 1 + o.eps_high) & (A > 0)
    if isr is not None and o.loss_type != "vespo":
        per_tok = per_tok * isr
    if kl is not None and o.beta != 0:
        per_tok = per_tok + o.beta * kl
    per_tok = torch.where(on, per_tok, 0.0)  # also broadcasts [B, 1] to [B, T]
    w = token_weights(completion_mask, loss_type=o.loss_type, max_completion_length=o.max_completion_length,
                      num_items_in_batch=num_items_in_batch)
    loss = (w * per_tok).sum()

    low_s = zero if low is None else _stat_mean(low, m)
    high_s = zero if high is None else _stat_mean(high, m)
    region = high if low is None else low | high
    stats = {
        "kl": zero if kl is None else _stat_mean(kl.detach(), m),
        "clip_ratio_low": low_s,
        "clip_ratio_high": high_s,
        "clip_ratio_region": zero if region is None else _stat_mean(region, m),
        **extra,
    }
    if entropy is not None:
        stats["entropy"] = _stat_mean(entropy.detach(), m)
    return loss, stats


def token_weights(completion_mask, *, loss_type, max_completion_length=None, num_items_in_batch=None):
    """Per-token weight ``w`` with ``loss = sum(w * l_t)`` for each aggregation (TRL 1.16's normalisations).

    grpo/sapo: ``mean_b(sum_t m l / sum_t m)``; bnpo: ``sum m l / sum m``; dr_grpo:
    ``sum m l / (B * max_completion_length)`` (default T); dapo/cispo/vespo: ``sum m l / num_items_in_batch``
    (default ``sum m``); luspo: ``mean_b(sum_t m l)``.

    Shape:
        completion_mask: [B, T] -> [B, T] fp32
    """
    m = completion_mask.float()
    B, T = m.shape
    if loss_type in ("grpo", "sapo"):
        return m / (m.sum(-1, keepdim=True).clamp_min(1.0) * B)
    if loss_type == "bnpo":
        return m / m.sum().clamp_min(1.0)
    if loss_type == "dr_grpo":
        return m / float(B * (T if max_completion_length is None else max_completion_length))
    if loss_type == "luspo":
        return m / float(max(B, 1))
    if num_items_in_batch is None:
        return m / m.sum().clamp_min(1.0)
    if isinstance(num_items_in_batch, torch.Tensor):
        return m / num_items_in_batch.to(device=m.device, dtype=torch.float32)
    return m / float(num_items_in_batch)
