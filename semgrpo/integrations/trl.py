"""Compute TRL's ``GRPOTrainer`` loss with semgrpo's fused-linear op (no [B, T, V] logits).

    from trl import GRPOTrainer
    from semgrpo.integrations.trl import use_semgrpo_loss

    trainer = GRPOTrainer(model=..., reward_funcs=..., args=..., train_dataset=...)
    use_semgrpo_loss(trainer)          # the loss now goes through semgrpo.ops
    trainer.train()

How it works. :func:`use_semgrpo_loss` gives the policy model (the PEFT base model when there is an adapter,
the same object TRL gives its own fused head) an extra forward mode and replaces the trainer's
``_compute_loss``. The loss calls the model through whatever wraps it (Accelerate, DDP, DeepSpeed, PEFT) with
extra keyword arguments; the extra mode runs the model body (``base_model``) for the last hidden states, takes
the positions that predict the completion tokens (``hidden[:, -(K+1):-1]``), and projects only the tokens in
the loss mask through the LM-head weight with :func:`semgrpo.ops.linear_logprobs_and_entropy`, which streams
the vocabulary in fp32 tiles. The projection runs inside the model's forward, as TRL's own fused head does, so
wrapper hooks fire as usual: under DeepSpeed ZeRO-3 the engine fetches the head weight when the forward reads it
and again before the backward (an external parameter of the model). Should the weight (or bias) still be
partitioned when the projection runs, it is gathered for the projection and gathered again for its backward,
which re-reads it; a weight already available is used as is. An FSDP2 ``DTensor`` head is materialised with
``full_tensor()``.
The per-token GRPO math then runs on the [B, T] log-probs with
:func:`semgrpo.ops.grpo_loss.policy_loss_from_logps`, the function behind :func:`semgrpo.ops.linear_grpo_loss`.
This path needs the per-token log-probs and entropies itself (entropy and off-policy masks are built from them
before the loss, and TRL's per-sequence clip metrics need the ratios), which ``linear_grpo_loss`` keeps inside.

Covered, with TRL 1.16's semantics (the loss, its gradient and the logged metrics):

* every ``loss_type`` (grpo, bnpo, dr_grpo, dapo, cispo, sapo, luspo, vespo) with TRL's normalisers: division
  by ``current_gradient_accumulation_steps`` in training, and for dapo/cispo/vespo the generation batch's
  ``num_items_in_batch`` divided by the number of processes and scaled by
  ``gradient_accumulation_steps / steps_per_generation``;
* ``beta`` with ``use_bias_correction_kl`` (TRL's default: the KL term times the importance ratio);
* ``importance_sampling_level="sequence"`` (GSPO), two-sided clipping ``delta``, sapo temperatures and vespo's
  gamma parameters from the config;
* vLLM importance-sampling correction: ``importance_sampling_ratio`` from the batch (per token or per
  sequence, as TRL computed it when generating) multiplies the policy term when TRL would apply it; vespo folds
  it into its sequence weight instead, as TRL does;
* ``off_policy_mask_threshold`` and ``top_entropy_quantile < 1``: the masks come from the trainer's own
  ``get_off_policy_mask`` / ``get_high_entropy_mask`` (the latter gathers entropies across processes) applied
  to our log-probs and entropies, and multiply the policy term only, not the KL term or the normalisers;
* the entropy bonus (``entropy_coef``, adaptive or static), including the adaptive controller's state;
* ``tool_mask`` (tool-result tokens leave the loss), ``cast_lm_head_to_fp32`` (hidden states cast to fp32,
  the fp32 head weight TRL made), linear logit scales from the config (``logit_scale``, ``output_multiplier``,
  ``lm_head_multiplier``, ``logits_scaling``: folded into the temperature, which is exact);
* metrics under TRL's names and reductions: ``entropy``, ``kl``, ``clip_ratio/{low,high,region}_mean``
  (token-weighted over all processes), ``clip_ratio/low_min`` and ``clip_ratio/high_max`` (over the gathered
  per-sequence fractions), ``cispo_clip_ratio``, ``vespo/phi_seq_mean``, ``policy_loss`` and ``entropy_coef``
  with the entropy bonus.

Falls back to TRL's own loss (with one :class:`SemgrpoFallbackWarning` per reason) for multimodal batches
(image inputs reach the model through keys this path does not forward), MoE models with the router aux loss
enabled (the aux loss comes from the full model output), and models whose logits are not a linear function of
the hidden states (``final_logit_softcapping``, e.g. Gemma 2; a logit scale that is not a positive number).
:func:`unsupported_reason` says which applies. Old-policy and reference log-probs are still computed by TRL.

Numerics: in fp32 the results equal TRL's up to summation order. With a bf16/fp16 model and
``cast_lm_head_to_fp32=False`` TRL rounds each logits tile to the autocast (or hidden) dtype, while semgrpo
accumulates the head products in fp32 without rounding, so the two differ at that precision (semgrpo's values
are the more accurate ones); with ``cast_lm_head_to_fp32=True`` both compute the head in fp32. Tested with trl
1.16.0.
"""

from __future__ import annotations

import functools
import inspect
import math
import types
import warnings
from contextlib import nullcontext

import torch

from semgrpo.ops import linear_logprobs_and_entropy
from semgrpo.ops.grpo_loss import policy_loss_from_logps

_MULTIMODAL_KEYS = ("pixel_values", "image_grid_thw", "pixel_attention_mask", "image_sizes", "token_type_ids",
                    "mm_token_type_ids", "spatial_shapes", "num_tiles", "image_position_ids")
_CLIP_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")
_TOKEN_SUM_LOSS_TYPES = ("dapo", "cispo", "vespo")  # normalised by num_items_in_batch, not by accumulation steps
_FORWARD_MARK = "_semgrpo_completion_forward"


class SemgrpoFallbackWarning(UserWarning):
    """semgrpo's loss is not used for a trainer/batch; TRL's own ``_compute_loss`` runs instead."""


# ----------------------------------------------------------------------------------------------------------------
# model helpers


def _policy_model(trainer):
    """The model TRL gives its fused head: the base model under a PEFT adapter, else the trainer's model."""
    model = trainer.model
    get_base = getattr(model, "get_base_model", None)  # PEFT's PeftModel; transformers models have no such method
    return get_base() if callable(get_base) else model


def _text_config(model):
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _number(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _logit_multiplier(text_config) -> float:
    """Factor the model applies to the LM-head output before the softmax (1.0 when none; NaN when unreadable), read
    from the same config fields as TRL 1.16's fused head; the last one divides (multiplies for HyperCLOVA X)."""
    for name in ("logit_scale", "output_multiplier", "lm_head_multiplier"):
        value = getattr(text_config, name, None)
        if value is not None:
            return _number(value)
    divisor = getattr(text_config, "logits_scaling", None)
    if divisor is None:
        return 1.0
    divisor = _number(divisor)
    if getattr(text_config, "model_type", None) == "hyperclovax":
        return divisor
    return 1.0 / divisor if divisor != 0 else math.inf


def _backbone(model):
    body = getattr(model, "base_model", None)
    return None if body is None or body is model else body


# ----------------------------------------------------------------------------------------------------------------
# LM-head projection (ZeRO-3 aware)


def _partitioned(*params) -> list:
    """DeepSpeed ZeRO-3 parameters among `params` that are not gathered right now (no ``ds_status`` outside ZeRO-3)."""
    found = {}
    for p in params:
        status = getattr(p, "ds_status", None) if p is not None else None
        if status is not None and getattr(status, "name", str(status)) != "AVAILABLE":
            found[id(p)] = p  # tied or shared parameters appear once
    return list(found.values())


def _gathered(params):
    """Context in which the partitioned `params` hold their full data."""
    if not params:
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params)


def _op_kwargs(backend):
    if backend is None:
        return {}
    try:
        accepts = "backend" in inspect.signature(linear_logprobs_and_entropy).parameters
    except (TypeError, ValueError):
        accepts = False
    return {"backend": backend} if accepts else {}


class _GatheredHeadProjection(torch.autograd.Function):
    """``linear_logprobs_and_entropy`` with a ZeRO-3-partitioned head: the weight/bias are gathered while the
    forward runs and again while the backward re-reads them. The op's graph is built on a detached copy of the
    hidden states and differentiated with ``torch.autograd.grad`` inside the second gather."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, ids, temperature, op_kwargs):
        params = [p for p in (weight, bias) if p is not None]
        with _gathered(_partitioned(*params)), torch.enable_grad():
            h = hidden.detach().requires_grad_(hidden.requires_grad)
            logp, ent = linear_logprobs_and_entropy(h, weight, ids, bias=bias, temperature=temperature,
                                                    with_entropy=True, **op_kwargs)
        ctx.graph = (h, weight, bias, logp, ent)
        return logp.detach(), ent.detach()

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        h, weight, bias, logp, ent = ctx.graph
        ctx.graph = None
        outs = [(o, g) for o, g in ((logp, g_logp), (ent, g_ent)) if g is not None and o.requires_grad]
        wanted = [(i, t) for i, t in enumerate((h, weight, bias)) if t is not None and ctx.needs_input_grad[i]]
        grads = [None, None, None]
        if outs and wanted:
            with _gathered(_partitioned(weight, bias)):
                got = torch.autograd.grad([o for o, _ in outs], [t for _, t in wanted], [g for _, g in outs],
                                          allow_unused=True)
            for (i, _), g in zip(wanted, got):
                grads[i] = g
        return grads[0], grads[1], grads[2], None, None, None


def _project(hidden, weight, bias, ids, temperature, backend):
    """Differentiable (logp, entropy) [N] of ``softmax((hidden @ weight.T + bias) / temperature)`` at `ids`."""
    kw = _op_kwargs(backend)
    if _partitioned(weight, bias):
        return _GatheredHeadProjection.apply(hidden, weight, bias, ids, temperature, kw)
    return linear_logprobs_and_entropy(hidden, weight, ids, bias=bias, temperature=temperature, with_entropy=True,
                                       **kw)


def _completion_logps(model, args, kwargs, ids, on, temperature, fp32, backend):
    """Run the body of `model`, project the positions predicting ``ids[on]``; (logp, entropy) [B, K], 0 off `on`."""
    for name in ("labels", "shift_labels", "num_items_in_batch", "logits_to_keep", "fused_lm_head"):
        kwargs.pop(name, None)
    kwargs["use_cache"] = False
    out = _backbone(model)(*args, **kwargs)
    last = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    K = ids.shape[1]
    head = model.get_output_embeddings()
    weight, bias = head.weight, getattr(head, "bias", None)
    try:  # FSDP2 shards parameters as DTensors; the projection needs the whole matrix (differentiable gather)
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch builds without distributed
        DTensor = ()
    if isinstance(weight, DTensor):
        weight = weight.full_tensor()
        bias = bias.full_tensor() if isinstance(bias, DTensor) else bias
    dev = weight.device
    hidden = last[:, last.shape[1] - K - 1 : last.shape[1] - 1].to(dev)  # position t predicts completion token t
    if fp32:
        hidden = hidden.float()
    on_d = on.to(dev)
    ids_on = ids.to(dev)[on_d]
    logp_on, ent_on = _project(hidden[on_d], weight, bias, ids_on, temperature, backend)
    zeros = torch.zeros(on.shape, dtype=torch.float32, device=dev)
    logp = zeros.masked_scatter(on_d, logp_on).to(ids.device)
    ent = zeros.masked_scatter(on_d, ent_on).to(ids.device)
    return logp, ent


def _install_completion_forward(model) -> None:
    """Give `model` a forward mode returning completion (logp, entropy); any other call goes to its current forward
    (TRL's fused head, generation, the original forward)."""
    if getattr(model.forward, _FORWARD_MARK, False):
        return
    previous = model.forward

    @functools.wraps(type(model).forward)  # keeps the signature that `generate` validates its kwargs against
    def forward(self, *args, semgrpo_ids=None, semgrpo_on=None, semgrpo_temperature=1.0, semgrpo_fp32=False,
                semgrpo_backend=None, **kwargs):
        if semgrpo_ids is None:
            return previous(*args, **kwargs)
        return _completion_logps(self, args, kwargs, semgrpo_ids, semgrpo_on, semgrpo_temperature, semgrpo_fp32,
                                 semgrpo_backend)

    setattr(forward, _FORWARD_MARK, True)
    model.forward = types.MethodType(forward, model)


# ----------------------------------------------------------------------------------------------------------------
# the loss


def unsupported_reason(trainer, inputs: dict | None = None) -> str | None:
    """Why this trainer/batch needs TRL's own loss, or None when semgrpo computes it.

    Only three things do: the MoE router aux loss, a model whose logits are not linear in the hidden states
    (``final_logit_softcapping``, a non-positive logit scale) or that lacks a separate body/LM head, and
    multimodal inputs.
    """
    if getattr(trainer, "aux_loss_enabled", False):
        return "MoE router aux loss (router_aux_loss_coef != 0) needs the full model output"
    model = _policy_model(trainer)
    text_config = _text_config(model)
    cap = getattr(text_config, "final_logit_softcapping", None)
    if cap is not None:
        return f"final_logit_softcapping={cap}: tanh-capped logits are not a linear LM head"
    scale = _logit_multiplier(text_config)
    if not 0 < scale < math.inf:
        return f"logit scale {scale} is not a positive finite number"
    if _backbone(model) is None or model.get_output_embeddings() is None:
        return f"{type(model).__name__} has no separate model body (base_model) and LM head"
    if inputs is not None and any(inputs.get(k) is not None for k in _MULTIMODAL_KEYS):
        return "multimodal inputs"
    return None


def _masked_sum_count(x, mask, per_seq_count):
    """Local (sum, count) of a TRL metric: a [B, 1] value is one per sequence, a [B, T] one per unmasked token."""
    if x.shape[1] == 1:
        return x.float().sum(), per_seq_count
    return (x.float() * mask).sum(), mask.sum().float()


def _seq_fraction(x, mask):
    """Per-sequence mean of a [B, T] (or per-sequence [B, 1]) 0/1 tensor; NaN for an empty sequence."""
    if x.shape[1] == 1:
        return x.float().squeeze(1)
    return (x.float() * mask).sum(-1) / mask.sum(-1)


def _nan_extreme(x, fn):
    keep = x[~torch.isnan(x)]
    return float("nan") if keep.numel() == 0 else fn(keep).item()


def _semgrpo_compute_loss(self, model, inputs):
    reason = unsupported_reason(self, inputs)
    if reason is not None:
        if reason not in self._semgrpo_warned:
            self._semgrpo_warned.add(reason)
            warnings.warn(f"semgrpo loss not used ({reason}); falling back to TRL's loss", SemgrpoFallbackWarning,
                          stacklevel=2)
        self._semgrpo_counts["fallback"] += 1
        return self._semgrpo_original_compute_loss(model, inputs)
    self._semgrpo_counts["semgrpo"] += 1
    args = self.args
    prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
    completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
    mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
    on = mask != 0
    scale = _logit_multiplier(_text_config(_policy_model(self)))
    with self.accelerator.autocast():
        logp, ent = model(
            input_ids=torch.cat([prompt_ids, completion_ids], dim=1),
            attention_mask=torch.cat([prompt_mask, completion_mask], dim=1),
            semgrpo_ids=completion_ids, semgrpo_on=on, semgrpo_temperature=self.temperature / scale,
            semgrpo_fp32=bool(getattr(args, "cast_lm_head_to_fp32", False)), semgrpo_backend=self._semgrpo_backend,
        )
    B = completion_ids.size(0)
    adv = inputs["advantages"]
    adv = adv.unsqueeze(1) if adv.dim() == 1 else adv
    old = inputs.get("old_per_token_logps")
    old_eff = logp.detach() if old is None else old
    loss_type = self.loss_type

    # masks on the policy term, built from this step's entropies / log-probs as TRL builds them
    keep = None
    entropy_mask = None
    if self.top_entropy_quantile < 1.0:
        entropy_mask = self.get_high_entropy_mask(ent.detach(), mask, 1 - self.top_entropy_quantile)
        keep = entropy_mask.float()
    if self.off_policy_mask_threshold is not None:
        off_policy = self.get_off_policy_mask(
            advantages=adv, per_token_logps=logp.detach(),
            sampling_per_token_logps=inputs.get("sampling_per_token_logps", old_eff), mask=mask,
            off_policy_threshold=self.off_policy_mask_threshold,
        ).float()
        keep = off_policy if keep is None else keep * off_policy
    if loss_type == "vespo":
        is_ratio = inputs.get("importance_sampling_ratio")  # TRL folds it into vespo's weight whenever present
    elif self.use_vllm and self.vllm_importance_sampling_correction:
        is_ratio = inputs["importance_sampling_ratio"]
    else:
        is_ratio = None
    adv_loss, ratio_loss = adv, is_ratio
    if keep is not None:
        if loss_type == "vespo":
            adv_loss = adv * keep  # a 0/1 factor on A is a 0/1 factor on -phi * A * logp (phi is finite)
        else:  # the IS ratio multiplies exactly the policy term, which is what the masks multiply
            ratio_loss = keep if is_ratio is None else is_ratio.float() * keep

    mode = "train" if self.model.training else "eval"
    normalizer = None
    if loss_type in _TOKEN_SUM_LOSS_TYPES:
        normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
        if mode == "train":
            normalizer = normalizer * self.current_gradient_accumulation_steps / args.steps_per_generation
    loss, stats = policy_loss_from_logps(
        logp, mask, adv_loss, old, inputs["ref_per_token_logps"] if self.beta != 0.0 else None,
        eps_low=self.epsilon_low, eps_high=self.epsilon_high, beta=self.beta, loss_type=loss_type,
        importance_sampling_level=self.importance_sampling_level, delta=args.delta,
        use_bias_correction_kl=bool(args.use_bias_correction_kl), vllm_is_ratio=ratio_loss,
        max_completion_length=self.max_completion_length, num_items_in_batch=normalizer,
        sapo_temperature_pos=args.sapo_temperature_pos, sapo_temperature_neg=args.sapo_temperature_neg,
        vespo_k_pos=args.vespo_k_pos, vespo_lambda_pos=args.vespo_lambda_pos, vespo_k_neg=args.vespo_k_neg,
        vespo_lambda_neg=args.vespo_lambda_neg, entropy=ent,
    )
    policy_loss = loss.detach()
    if loss_type not in _TOKEN_SUM_LOSS_TYPES and mode == "train":
        loss = loss / self.current_gradient_accumulation_steps
    if self._entropy_bonus_enabled:
        loss = _entropy_bonus(self, loss, ent, mask, entropy_mask, policy_loss, mode)
    if loss_type == "vespo" and keep is not None:  # the logged weight is the unmasked one
        with torch.no_grad():
            _, plain = policy_loss_from_logps(
                logp.detach(), mask, adv, old, None, loss_type="vespo", vllm_is_ratio=is_ratio,
                vespo_k_pos=args.vespo_k_pos, vespo_lambda_pos=args.vespo_lambda_pos, vespo_k_neg=args.vespo_k_neg,
                vespo_lambda_neg=args.vespo_lambda_neg)
        stats["vespo_phi_seq_mean"] = plain["vespo_phi_seq_mean"]
    _log_metrics(self, mode, logp, old_eff, adv, mask, ent, stats, B)
    return loss


def _entropy_bonus(self, loss, ent, mask, entropy_mask, policy_loss, mode):
    """TRL's entropy regularisation: subtract coef * mean entropy over the tokens the policy term acts on, and run
    the adaptive coefficient controller (state on the trainer, updated at optimizer-step boundaries)."""
    args = self.args
    acting = mask if entropy_mask is None else mask * entropy_mask
    accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1.0
    mean_entropy = (ent * acting).sum() / acting.sum().clamp(min=1.0) / accumulation
    if self.use_adaptive_entropy:
        coef = self.entropy_coef if self._last_world_entropy <= args.entropy_target else 0.0
    else:
        coef = self.entropy_coef
    loss = loss - coef * mean_entropy
    self._metrics[mode]["policy_loss"].append(self.accelerator.gather(policy_loss).nanmean().item())
    if self.use_adaptive_entropy and mode == "train":
        window = torch.stack([(ent * acting).sum(), acting.sum()]).detach()
        previous = self._entropy_window_stats
        self._entropy_window_stats = window if previous is None else previous + window
        if self.accelerator.sync_gradients:
            total = self.accelerator.reduce(self._entropy_window_stats, reduction="sum")
            world_entropy = (total[0] / total[1].clamp(min=1.0)).item()
            step = args.entropy_coef_delta
            if world_entropy <= args.entropy_target:
                self.entropy_coef = min(self.entropy_coef + step, args.entropy_coef_max)
            else:
                self.entropy_coef = max(self.entropy_coef - step, args.entropy_coef_min)
            self._last_world_entropy = world_entropy
            self._entropy_window_stats = None
    if mode == "train" and self.accelerator.sync_gradients:
        self._metrics[mode]["entropy_coef"].append(self.entropy_coef)
    return loss


def _log_metrics(self, mode, logp, old, adv, mask, ent, stats, B):
    """The metrics TRL's ``_compute_loss`` logs, with its reductions (one all-reduce and at most one gather here)."""
    with torch.no_grad():
        mask_f = mask.float()
        n_seq = torch.tensor(float(B), device=logp.device)
        n_tok = mask_f.sum()
        ent_sum, ent_count = _masked_sum_count(ent, mask_f, n_seq)
        names, sums, counts = ["entropy"], [ent_sum], [ent_count]
        if self.beta != 0.0:
            names.append("kl")
            sums.append(stats["kl"] * n_tok)
            counts.append(n_tok)
        per_seq = None
        if self.loss_type in _CLIP_LOSS_TYPES or self.loss_type == "cispo":
            log_ratio = logp - old
            if self.importance_sampling_level == "sequence":
                log_ratio = ((log_ratio * mask_f).sum(-1) / mask_f.sum(-1).clamp(min=1.0)).unsqueeze(-1)
            ratio = torch.exp(log_ratio)
            if self.loss_type == "cispo":
                flags = {"cispo_clip_ratio": (ratio > self.epsilon_high) & (adv > 0)}
            else:
                if self.args.delta is not None:
                    ratio = torch.clamp(ratio, max=self.args.delta)
                low = (ratio < 1 - self.epsilon_low) & (adv < 0)
                high = (ratio > 1 + self.epsilon_high) & (adv > 0)
                flags = {"clip_ratio/low_mean": low, "clip_ratio/high_mean": high,
                         "clip_ratio/region_mean": low | high}
                per_seq = torch.stack([_seq_fraction(low, mask_f), _seq_fraction(high, mask_f)], dim=1)
            for name, flag in flags.items():
                s, c = _masked_sum_count(flag, mask_f, n_seq)
                names.append(name)
                sums.append(s)
                counts.append(c)
        elif self.loss_type == "vespo":
            names.append("vespo/phi_seq_mean")
            per_sequence_phi = adv.shape[1] == 1
            c = n_seq if per_sequence_phi else n_tok
            sums.append(stats["vespo_phi_seq_mean"] * c)
            counts.append(c)
        totals = self.accelerator.reduce(torch.stack(sums + counts).float(), reduction="sum")
        k = len(names)
        values = (totals[:k] / totals[k:].clamp(min=1.0)).tolist()
        for name, value in zip(names, values):
            self._metrics[mode][name].append(value)
        if per_seq is not None:
            gathered = self.accelerator.gather(per_seq)
            self._metrics[mode]["clip_ratio/low_min"].append(_nan_extreme(gathered[:, 0], torch.min))
            self._metrics[mode]["clip_ratio/high_max"].append(_nan_extreme(gathered[:, 1], torch.max))


def use_semgrpo_loss(trainer, *, backend: str | None = None):
    """Make a TRL ``GRPOTrainer`` compute its loss with semgrpo's fused-linear op (see the module docstring).

    Args:
        trainer: A constructed ``trl.GRPOTrainer`` (or subclass), patched in place; calling it again only updates
            `backend`.
        backend: ``"triton"``/``"torch"`` forces the op's path when the installed op takes a ``backend`` keyword;
            None or ``"auto"`` dispatches by device.

    Returns:
        The same trainer, for chaining. ``trainer._semgrpo_counts`` counts the loss calls that used semgrpo
        (``"semgrpo"``) and those that fell back (``"fallback"``).

    Raises:
        TypeError: ``trainer`` is not a ``trl.GRPOTrainer``.
        ValueError: unknown `backend`.
    """
    from trl import GRPOTrainer

    if not isinstance(trainer, GRPOTrainer):
        raise TypeError(f"use_semgrpo_loss expects a trl.GRPOTrainer, got {type(trainer).__name__}")
    if backend not in (None, "auto", "triton", "torch"):
        raise ValueError(f"backend must be None, 'auto', 'triton' or 'torch', got {backend!r}")
    _install_completion_forward(_policy_model(trainer))
    if not hasattr(trainer, "_semgrpo_original_compute_loss"):
        trainer._semgrpo_original_compute_loss = trainer._compute_loss
        trainer._semgrpo_warned = set()
        trainer._semgrpo_counts = {"semgrpo": 0, "fallback": 0}
    trainer._semgrpo_backend = backend
    trainer._compute_loss = types.MethodType(_semgrpo_compute_loss, trainer)
    return trainer
