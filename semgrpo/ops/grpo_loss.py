"""GRPO loss on completion logits, every TRL 1.16 option, with its gradient to the logits.

Semantics follow TRL 1.16's ``GRPOTrainer._compute_loss`` number for number, so that results compare with
TRL's and Liger's directly. The classic four loss types (:data:`LOSS_TYPES`) at token level::

    logp   = log_softmax(logits / temperature)[id]
    ratio  = exp(logp - old)                       old = logp.detach() when absent
    l_t    = -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A) + beta * k3
    k3     = exp(ref - logp) - (ref - logp) - 1
    grpo   : mean_b( sum_t m*l_t / sum_t m )     bnpo: sum m*l_t / sum m
    dr_grpo: sum m*l_t / (B * max_completion_length)
    dapo   : sum m*l_t / num_items_in_batch (falls back to sum m)

``policy_loss_from_logps`` holds the per-token math of every TRL 1.16 loss type (:data:`TRL_LOSS_TYPES`:
also cispo, sapo, luspo, vespo) and option (sequence-level importance sampling, delta, bias-corrected KL,
vLLM IS ratios) on given log-probs; ``grpo_loss_torch``, ``grpo_loss``'s Triton path outside the fused
kernel's cases and ``linear_grpo_loss`` all call it.

``grpo_loss`` on the Triton path:

* fully fused (``_grpo_kernel.grpo_loss_triton``) for LOSS_TYPES at token level without delta, bias-corrected
  KL (with a reference), vLLM IS ratio or entropy: every aggregation there is linear in ``l_t``,
  ``loss = sum_bt w_bt * l_t`` with a weight ``w`` known before the kernel runs, so the forward reduces each
  row to two scalars (its logsumexp and ``w * dl/dlogp``) from which the backward writes
  ``d loss / d logits`` in one pass;
* every other configuration: a differentiable Triton ``(logp, entropy)`` of the logits
  (``_grpo_kernel.logp_entropy_triton``, one streaming pass per row forward and one backward, same
  memory traffic) and ``policy_loss_from_logps`` on its [B, T] output.
"""

from __future__ import annotations

import math

import torch

from ._dispatch import check_float_tensor, check_positive, use_triton
from ._grpo_kernel import grpo_loss_triton, logp_entropy_triton

# The clipped-surrogate loss types grpo_loss's fully fused Triton kernel computes (module docstring); grpo_loss
# itself accepts every TRL_LOSS_TYPES entry.
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
# Every loss type of TRL 1.16's GRPOTrainer; grpo_loss, policy_loss_from_logps and linear_grpo_loss take all.
TRL_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo")
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")


def _is_number(x) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, float))


def _validate_loss_args(shape, device, source, ids, mask, adv, old, ref, *, temperature, eps_low, eps_high, beta,
                        loss_type, max_completion_length, num_items_in_batch, loss_types=LOSS_TYPES,
                        importance_sampling_level="token", delta=None, vllm_is_ratio=None, sapo_temperatures=(),
                        vespo_params=()):
    """Checks of everything but the logits / hidden states, whose leading dims are `shape` = (B, T) and which
    live on `device`; `source` names them in messages."""
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
    check_positive("temperature", temperature)
    for name, e in (("eps_low", eps_low), ("eps_high", eps_high)):
        if not _is_number(e) or not 0 <= e < float("inf"):
            raise ValueError(f"{name} must be a finite number >= 0, got {e!r}")
    if eps_low >= 1:
        raise ValueError(f"eps_low must be < 1 so that 1 - eps_low > 0, got {eps_low!r}")
    if not _is_number(beta) or not 0 <= beta < float("inf"):
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
    if beta > 0 and ref is None:
        raise ValueError(f"beta={beta} > 0 needs ref_logps (got None)")
    if loss_type not in loss_types:
        raise ValueError(f"loss_type must be one of {loss_types}, got {loss_type!r}")
    if importance_sampling_level not in IMPORTANCE_SAMPLING_LEVELS:
        raise ValueError(f"importance_sampling_level must be one of {IMPORTANCE_SAMPLING_LEVELS}, "
                         f"got {importance_sampling_level!r}")
    if delta is not None and (not _is_number(delta) or not 0 < delta < float("inf")):
        raise ValueError(f"delta must be a finite number > 0 or None, got {delta!r}")
    for name, v in sapo_temperatures:
        if not _is_number(v) or not 0 < v < float("inf"):
            raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    for name, v in vespo_params:
        if not _is_number(v) or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number, got {v!r}")
    if max_completion_length is not None and (
        isinstance(max_completion_length, bool) or not isinstance(max_completion_length, int)
        or max_completion_length < 1
    ):
        raise ValueError(f"max_completion_length must be an int >= 1 or None, got {max_completion_length!r}")
    if num_items_in_batch is not None and not isinstance(num_items_in_batch, torch.Tensor) and (
            not _is_number(num_items_in_batch) or not num_items_in_batch > 0):
        raise ValueError(f"num_items_in_batch must be a number > 0, a tensor or None, got {num_items_in_batch!r}")


# The keyword options grpo_loss and linear_grpo_loss share, gathered by `loss_options` from the caller's
# arguments so that both validate and apply them through the same two functions below.
LOSS_OPTIONS = ("temperature", "eps_low", "eps_high", "beta", "loss_type", "importance_sampling_level", "delta",
                "use_bias_correction_kl", "vllm_is_ratio", "max_completion_length", "num_items_in_batch",
                "sapo_temperature_pos", "sapo_temperature_neg", "vespo_k_pos", "vespo_lambda_pos", "vespo_k_neg",
                "vespo_lambda_neg", "return_entropy")


def loss_options(arguments: dict) -> dict:
    """The LOSS_OPTIONS entries of a caller's ``locals()`` (taken before it defines any other name)."""
    o = {name: arguments[name] for name in LOSS_OPTIONS}
    o["return_entropy"] = bool(o["return_entropy"])
    return o


def validate_options(shape, device, source, ids, mask, adv, old, ref, o):
    """Checks of every argument but the logits / hidden states (leading dims `shape`, on `device`, named
    `source` in messages); `o` holds the keyword options by name (`loss_options`)."""
    _validate_loss_args(
        shape, device, source, ids, mask, adv, old, ref,
        temperature=o["temperature"], eps_low=o["eps_low"], eps_high=o["eps_high"], beta=o["beta"],
        loss_type=o["loss_type"], max_completion_length=o["max_completion_length"],
        num_items_in_batch=o["num_items_in_batch"], loss_types=TRL_LOSS_TYPES,
        importance_sampling_level=o["importance_sampling_level"], delta=o["delta"],
        vllm_is_ratio=o["vllm_is_ratio"],
        sapo_temperatures=tuple((k, o[k]) for k in ("sapo_temperature_pos", "sapo_temperature_neg")),
        vespo_params=tuple((k, o[k]) for k in ("vespo_k_pos", "vespo_lambda_pos", "vespo_k_neg",
                                               "vespo_lambda_neg")),
    )


def _fully_fused(o, ref) -> bool:
    """Whether the fused Triton kernel computes this configuration exactly (module docstring)."""
    return (o["loss_type"] in LOSS_TYPES and o["importance_sampling_level"] == "token" and o["delta"] is None
            and not (o["use_bias_correction_kl"] and ref is not None) and o["vllm_is_ratio"] is None
            and not o["return_entropy"])


def loss_from_logps(logp, ent, mask, adv, old, ref, o):
    """policy_loss_from_logps with the options `o`. `ent` (masked positions 0), when given, is reported as
    ``stats["entropy"]`` and, with ``o["return_entropy"]``, as ``stats["per_token_entropy"]``."""
    kw = {k: v for k, v in o.items() if k not in ("temperature", "return_entropy")}
    loss, stats = policy_loss_from_logps(logp, mask, adv, old, ref, entropy=ent, **kw)
    if o["return_entropy"]:
        stats["per_token_entropy"] = ent
    return loss, stats


def _masked_mean(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return (x * m).sum() / m.sum().clamp_min(1.0)


def _stat_mean(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """TRL's logged mean: a per-sequence [B, 1] value averages over the B sequences, a per-token one over the
    unmasked tokens."""
    if x.shape[-1] == 1 and m.shape[-1] != 1:
        return x.float().sum() / max(x.shape[0], 1)
    return _masked_mean(x.float(), m)


def _vespo_weights(adv, log_ratio, m, on, is_ratio, k_pos, lambda_pos, k_neg, lambda_neg):
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
        k = torch.where(nonneg, float(k_pos), float(k_neg))
        lam = torch.where(nonneg, float(lambda_pos), float(lambda_neg)).clamp(min=1e-4)
        phi = torch.exp(lam + k * log_w - lam * torch.exp(log_w))
        return phi.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


def policy_loss_from_logps(
    logp, completion_mask, advantages, old_logps=None, ref_logps=None, *, eps_low=0.2, eps_high=0.2, beta=0.0,
    loss_type="grpo", importance_sampling_level="token", delta=None, use_bias_correction_kl=False,
    vllm_is_ratio=None, max_completion_length=None, num_items_in_batch=None, sapo_temperature_pos=1.0,
    sapo_temperature_neg=1.05, vespo_k_pos=2.0, vespo_lambda_pos=3.0, vespo_k_neg=3.0, vespo_lambda_neg=2.0,
    entropy=None,
):
    """TRL 1.16 ``GRPOTrainer._compute_loss`` on given per-token log-probs (plain torch autograd through `logp`).

    The single home of the per-token GRPO math for every loss type in :data:`TRL_LOSS_TYPES`; ``grpo_loss_torch``
    and ``linear_grpo_loss`` call it. Arguments are validated by the caller. With
    ``r = exp(logp - old)`` (token level) or ``exp(sum_t m*(logp - old) / sum_t m)`` per sequence (``"sequence"``):

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
    if importance_sampling_level == "token":
        log_w = log_ratio
    else:
        log_w = (log_ratio * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp_min(1.0)
    coef_1 = torch.exp(log_w)

    kl = None
    if ref_logps is not None:
        d = torch.where(on, ref_logps.float(), lp_d) - logp
        kl = torch.exp(d) - d - 1
        if use_bias_correction_kl:
            kl = kl * coef_1

    zero = torch.zeros((), device=logp.device)
    low = high = None
    extra = {}
    if loss_type == "cispo":
        per_tok = -torch.clamp(coef_1, max=eps_high).detach() * A * logp
        high = (coef_1.detach() > eps_high) & (A > 0)
    elif loss_type == "sapo":
        tau = torch.where(A > 0, float(sapo_temperature_pos), float(sapo_temperature_neg))
        per_tok = -(torch.sigmoid(tau * (coef_1 - 1)) * 4 / tau) * A
    elif loss_type == "vespo":
        phi = _vespo_weights(A, log_ratio.detach(), m, on, isr, vespo_k_pos, vespo_lambda_pos, vespo_k_neg,
                             vespo_lambda_neg)
        per_tok = -phi * A * logp
        extra["vespo_phi_seq_mean"] = _stat_mean(phi, m)
    else:
        coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
        if delta is not None:
            coef_1 = torch.clamp(coef_1, max=delta)  # TRL's clip stats below see this clamped ratio too
        per_tok = -torch.min(coef_1 * A, coef_2 * A)
        r = coef_1.detach()
        low = (r < 1 - eps_low) & (A < 0)
        high = (r > 1 + eps_high) & (A > 0)
    if isr is not None and loss_type != "vespo":
        per_tok = per_tok * isr
    if kl is not None and beta != 0:
        per_tok = per_tok + beta * kl
    per_tok = torch.where(on, per_tok, 0.0)  # also broadcasts [B, 1] to [B, T]
    w = token_weights(completion_mask, loss_type=loss_type, max_completion_length=max_completion_length,
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


def grpo_loss_torch(logits, completion_ids, completion_mask, advantages, old_logps=None, ref_logps=None,
                    **options):
    """Torch reference of :func:`grpo_loss`: the same call (same keyword options, checks and results) with
    ``backend="torch"``; materializes fp32 logits, and `inplace_grad` has no effect."""
    return grpo_loss(logits, completion_ids, completion_mask, advantages, old_logps, ref_logps, backend="torch",
                     **options)


def _grpo_loss_torch(logits, ids, mask, adv, old, ref, o):
    """grpo_loss's torch path (validated arguments, options `o`): log-probs (and entropies) from fp32 logits."""
    on = mask != 0
    x = logits.float() / o["temperature"]
    lse = torch.logsumexp(x, dim=-1)
    ids = torch.where(on, ids, 0)  # masked positions may hold any id (e.g. -100), as on the Triton path
    logp = x.gather(-1, ids.long().unsqueeze(-1)).squeeze(-1) - lse
    ent = None
    if o["return_entropy"]:
        log_p = x - lse.unsqueeze(-1)
        ent = torch.where(on, -(log_p.exp() * log_p).sum(-1), 0.0)
    return loss_from_logps(logp, ent, mask, adv, old, ref, o)


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
    importance_sampling_level: str = "token",
    delta: float | None = None,
    use_bias_correction_kl: bool = False,
    vllm_is_ratio: torch.Tensor | None = None,
    max_completion_length: int | None = None,
    num_items_in_batch: int | float | torch.Tensor | None = None,
    sapo_temperature_pos: float = 1.0,
    sapo_temperature_neg: float = 1.05,
    vespo_k_pos: float = 2.0,
    vespo_lambda_pos: float = 3.0,
    vespo_k_neg: float = 3.0,
    vespo_lambda_neg: float = 2.0,
    return_entropy: bool = False,
    inplace_grad: bool = False,
    backend: str | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """TRL 1.16 GRPO loss (every loss type and option) on completion logits, with its gradient to the logits.

    The options, defaults, checks and results are those of :func:`semgrpo.ops.linear_grpo_loss` on logits
    ``hidden @ weight.T + bias`` (formulas: :func:`policy_loss_from_logps`). The Triton path runs one fused
    kernel pair for the configurations it covers (module docstring) and a Triton ``(logp, entropy)`` with
    the loss math in torch for the others; both read the logits twice and write the gradient once.

    Args:
        logits: Completion logits, any float dtype, may be a strided view such as
            ``full_logits[:, P-1:-1]``; ``logits[b, t]`` predicts ``completion_ids[b, t]``.
        completion_ids: Sampled token ids (int64/int32); masked positions may hold any value.
        completion_mask: 1 for real completion tokens, 0 for padding (bool/int/float).
        advantages: Per-sequence [B] or per-token [B, T] advantages.
        old_logps: Sampling-policy log-probs; ``None`` means ``logp.detach()`` (ratio 1).
        ref_logps: Reference-policy log-probs; required when ``beta > 0``.
        temperature: Divides the logits before the softmax.
        eps_low, eps_high: Clip range ``[1 - eps_low, 1 + eps_high]``; for cispo ``eps_high`` is the
            absolute cap of the ratio (TRL's ``epsilon_high``).
        beta: KL coefficient.
        loss_type: One of ``TRL_LOSS_TYPES``: grpo, bnpo, dr_grpo, dapo, cispo, sapo, luspo, vespo.
        importance_sampling_level: ``"token"`` or ``"sequence"`` (GSPO).
        delta: Upper bound of the unclipped ratio (two-sided clipping), clip loss types only.
        use_bias_correction_kl: Multiply the per-token KL by the importance ratio (TRL's default is True).
        vllm_is_ratio: [B, T], [B, 1] or [B] truncated importance-sampling correction multiplied into the
            policy loss (vespo folds it into its gamma weight instead).
        max_completion_length: dr_grpo denominator length (default T).
        num_items_in_batch: dapo/cispo/vespo denominator (global token count); default the mask sum.
        sapo_temperature_pos, sapo_temperature_neg: SAPO gate temperatures.
        vespo_k_pos, vespo_lambda_pos, vespo_k_neg, vespo_lambda_neg: VESPO gamma parameters.
        return_entropy: Also return ``stats["entropy"]`` (mean over unmasked tokens) and
            ``stats["per_token_entropy"]`` [B, T] fp32 (0 where masked), which stays attached to the graph so
            a caller can add an entropy bonus. Without it no entropy is computed (unlike
            ``linear_grpo_loss``, which always reports the mean).
        inplace_grad: Triton path only: the backward writes the gradient into the logits buffer
            (saves one [B, T, V] allocation; the logits values are destroyed then, so a second
            backward through the same graph, ``retain_graph=True``, raises).
        backend: ``"auto"``/``"triton"``/``"torch"``; default from ``SEMGRPO_OPS``.

    Returns:
        ``(loss, stats)``: fp32 scalar loss, and 0-d detached fp32 tensors ``kl`` (mean k3 over
        unmasked tokens, 0 without ref), ``clip_ratio_low``, ``clip_ratio_high``,
        ``clip_ratio_region`` (fractions of unmasked tokens; for cispo ``high``/``region`` count
        ``r > eps_high`` with ``A > 0``; 0 for sapo/vespo), ``vespo_phi_seq_mean`` for vespo, and the
        entropy entries above with `return_entropy`. No host sync.

    Shape:
        logits: [B, T, V], completion_ids/completion_mask/old_logps/ref_logps: [B, T],
        advantages: [B] or [B, T] -> loss: []
    """
    o = loss_options(locals())
    check_float_tensor("logits", logits, ndim=3)
    validate_options(tuple(logits.shape[:2]), logits.device, "logits", completion_ids, completion_mask, advantages,
                     old_logps, ref_logps, o)
    if not use_triton(logits, completion_ids, completion_mask, advantages, old_logps, ref_logps, vllm_is_ratio,
                      backend=backend):
        return _grpo_loss_torch(logits, completion_ids, completion_mask, advantages, old_logps, ref_logps, o)
    if _fully_fused(o, ref_logps):
        w = token_weights(completion_mask, loss_type=loss_type, max_completion_length=max_completion_length,
                          num_items_in_batch=num_items_in_batch)
        return grpo_loss_triton(
            logits, completion_ids, completion_mask, w, advantages, old_logps, ref_logps,
            temperature=float(temperature), eps_low=float(eps_low), eps_high=float(eps_high), beta=float(beta),
            inplace_grad=bool(inplace_grad),
        )
    logp, ent = logp_entropy_triton(logits, completion_ids, completion_mask, temperature=float(temperature),
                                    with_entropy=o["return_entropy"], inplace_grad=bool(inplace_grad))
    return loss_from_logps(logp, ent if o["return_entropy"] else None, completion_mask, advantages, old_logps,
                           ref_logps, o)
