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

``policy_loss.policy_loss_from_logps`` holds the per-token math of every TRL 1.16 loss type
(:data:`TRL_LOSS_TYPES`: also cispo, sapo, luspo, vespo) and option (sequence-level importance sampling,
delta, bias-corrected KL, vLLM IS ratios) on given log-probs; ``grpo_loss_torch``, ``grpo_loss``'s Triton path
outside the fused kernel's cases and ``linear_grpo_loss`` all call it. The options are one
:class:`~semgrpo.ops.loss_options.LossOptions` (or its fields as keywords).

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

import torch

from ._dispatch import check_float_tensor, use_triton
from ._grpo_kernel import grpo_loss_triton, logp_entropy_triton
from .loss_options import IMPORTANCE_SAMPLING_LEVELS, TRL_LOSS_TYPES, LossOptions, takes_loss_options
from .policy_loss import check_loss_inputs, policy_loss_from_logps, token_weights

# The clipped-surrogate loss types grpo_loss's fully fused Triton kernel computes (module docstring); grpo_loss
# itself accepts every TRL_LOSS_TYPES entry.
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")

__all__ = ["IMPORTANCE_SAMPLING_LEVELS", "LOSS_TYPES", "TRL_LOSS_TYPES", "LossOptions", "grpo_loss",
           "grpo_loss_torch", "loss_from_logps", "policy_loss_from_logps", "token_weights"]


def _fully_fused(o: LossOptions, ref, vllm_is_ratio, return_entropy: bool) -> bool:
    """Whether the fused Triton kernel computes this configuration exactly (module docstring)."""
    return (o.loss_type in LOSS_TYPES and o.importance_sampling_level == "token" and o.delta is None
            and not (o.use_bias_correction_kl and ref is not None) and vllm_is_ratio is None
            and not return_entropy)


def loss_from_logps(logp, ent, mask, adv, old, ref, vllm_is_ratio, num_items_in_batch, o: LossOptions,
                    return_entropy: bool):
    """policy_loss_from_logps with the options `o`. `ent` (masked positions 0), when given, is reported as
    ``stats["entropy"]`` and, with `return_entropy`, as ``stats["per_token_entropy"]``."""
    loss, stats = policy_loss_from_logps(logp, mask, adv, old, ref, vllm_is_ratio=vllm_is_ratio,
                                         num_items_in_batch=num_items_in_batch, entropy=ent, options=o)
    if return_entropy:
        stats["per_token_entropy"] = ent
    return loss, stats


def grpo_loss_torch(logits, completion_ids, completion_mask, advantages, old_logps=None, ref_logps=None,
                    **options):
    """Torch reference of :func:`grpo_loss`: the same call (same keyword options, checks and results) with
    ``backend="torch"``; materializes fp32 logits, and `inplace_grad` has no effect."""
    return grpo_loss(logits, completion_ids, completion_mask, advantages, old_logps, ref_logps, backend="torch",
                     **options)


def _grpo_loss_torch(logits, ids, mask, adv, old, ref, isr, n_items, o: LossOptions, return_entropy: bool):
    """grpo_loss's torch path (validated arguments): log-probs (and entropies) from fp32 logits."""
    on = mask != 0
    x = logits.float() / o.temperature
    lse = torch.logsumexp(x, dim=-1)
    ids = torch.where(on, ids, 0)  # masked positions may hold any id (e.g. -100), as on the Triton path
    logp = x.gather(-1, ids.long().unsqueeze(-1)).squeeze(-1) - lse
    ent = None
    if return_entropy:
        log_p = x - lse.unsqueeze(-1)
        ent = torch.where(on, -(log_p.exp() * log_p).sum(-1), 0.0)
    return loss_from_logps(logp, ent, mask, adv, old, ref, isr, n_items, o, return_entropy)


@takes_loss_options
def grpo_loss(
    logits: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    advantages: torch.Tensor,
    old_logps: torch.Tensor | None = None,
    ref_logps: torch.Tensor | None = None,
    *,
    vllm_is_ratio: torch.Tensor | None = None,
    num_items_in_batch: int | float | torch.Tensor | None = None,
    return_entropy: bool = False,
    inplace_grad: bool = False,
    backend: str | None = None,
    options: LossOptions | None = None,
    **option_values,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """TRL 1.16 GRPO loss (every loss type and option) on completion logits, with its gradient to the logits.

    The options, defaults, checks and results are those of :func:`semgrpo.ops.linear_grpo_loss` on logits
    ``hidden @ weight.T + bias`` (formulas: :func:`semgrpo.ops.policy_loss.policy_loss_from_logps`). The Triton path
    runs one fused kernel pair for the configurations it covers (module docstring) and a Triton
    ``(logp, entropy)`` with the loss math in torch for the others; both read the logits twice and write the
    gradient once.

    Args:
        logits: Completion logits, any float dtype, may be a strided view such as
            ``full_logits[:, P-1:-1]``; ``logits[b, t]`` predicts ``completion_ids[b, t]``.
        completion_ids: Sampled token ids (int64/int32); masked positions may hold any value.
        completion_mask: 1 for real completion tokens, 0 for padding (bool/int/float).
        advantages: Per-sequence [B] or per-token [B, T] advantages.
        old_logps: Sampling-policy log-probs; ``None`` means ``logp.detach()`` (ratio 1).
        ref_logps: Reference-policy log-probs; required when ``beta > 0``.
        vllm_is_ratio: [B, T], [B, 1] or [B] truncated importance-sampling correction multiplied into the
            policy loss (vespo folds it into its gamma weight instead).
        num_items_in_batch: dapo/cispo/vespo denominator (the global token count); default the mask sum.
        return_entropy: Also return ``stats["entropy"]`` (mean over unmasked tokens) and
            ``stats["per_token_entropy"]`` [B, T] fp32 (0 where masked), which stays attached to the graph so
            a caller can add an entropy bonus. Without it no entropy is computed (unlike
            ``linear_grpo_loss``, which always reports the mean).
        inplace_grad: Triton path only: the backward writes the gradient into the logits buffer
            (saves one [B, T, V] allocation; the logits values are destroyed then, so a second
            backward through the same graph, ``retain_graph=True``, raises).
        backend: ``"auto"``/``"triton"``/``"torch"``; default from ``SEMGRPO_OPS``.
        options, **option_values: The loss options, a :class:`LossOptions` and/or its fields as keywords
            (``temperature``, ``eps_low``, ``eps_high``, ``beta``, ``loss_type`` (any of ``TRL_LOSS_TYPES``),
            ``importance_sampling_level``, ``delta``, ``use_bias_correction_kl``, ``max_completion_length``, the
            sapo temperatures and vespo parameters); keywords win over `options`.

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
    o = LossOptions.resolve(options, option_values, "grpo_loss")
    return_entropy = bool(return_entropy)
    check_float_tensor("logits", logits, ndim=3)
    check_loss_inputs(tuple(logits.shape[:2]), logits.device, "logits", completion_ids, completion_mask, advantages,
                      old_logps, ref_logps, vllm_is_ratio, num_items_in_batch, o)
    batch = (completion_mask, advantages, old_logps, ref_logps, vllm_is_ratio, num_items_in_batch)
    if not use_triton(logits, completion_ids, completion_mask, advantages, old_logps, ref_logps, vllm_is_ratio,
                      backend=backend):
        return _grpo_loss_torch(logits, completion_ids, *batch, o, return_entropy)
    if _fully_fused(o, ref_logps, vllm_is_ratio, return_entropy):
        w = token_weights(completion_mask, loss_type=o.loss_type, max_completion_length=o.max_completion_length,
                          num_items_in_batch=num_items_in_batch)
        return grpo_loss_triton(logits, completion_ids, completion_mask, w, advantages, old_logps, ref_logps,
                                temperature=o.temperature, eps_low=o.eps_low, eps_high=o.eps_high, beta=o.beta,
                                inplace_grad=bool(inplace_grad))
    logp, ent = logp_entropy_triton(logits, completion_ids, completion_mask, temperature=o.temperature,
                                    with_entropy=return_entropy, inplace_grad=bool(inplace_grad))
    return loss_from_logps(logp, ent if return_entropy else None, *batch, o, return_entropy)
