"""Per-token completion log-probs from a causal LM with its LM head fused into the log-prob op: the one head
fusion of semgrpo's trainer and of the TRL drop-in (semgrpo/integrations/trl.py).

The GRPO passes (policy, old, reference) need ``log p(completion token)`` and, for logging, the entropy; never
the logits. So the causal LM's forward is replaced, for the call, by :func:`forward_to_logprobs`: it runs the
model's body (``base_model``), keeps the hidden states that predict the completion tokens and calls the LM head
*module* with its ``forward`` swapped for :func:`semgrpo.ops.linear_logprobs_and_entropy` on the head's own
weight, which streams the vocabulary in fp32 tiles. [B, T] values come back where the head would have written
[B, T, V] logits (plus their fp32 copy and its gradient in the loss).

* Under DeepSpeed ZeRO-3 the head module's hooks do what they do for any ``nn.Linear``: its weight is gathered
  for the forward and gathered again before the backward (the op's backward re-reads it), and its gradient
  reaches ZeRO-3's reduction hooks while it is whole. Tied embeddings need nothing special: the weight is the
  parameter the hooks manage. Under the trainer's gathered pass the weight is whole and the hooks are off. A
  weight still partitioned when the projection runs (no hook fetched it) is gathered for a pass without
  gradient and refused, with the reason, for one with (:func:`project`).
* An FSDP2 ``DTensor`` head is materialised with ``full_tensor()``.
* Logit scales: a model that multiplies its logits by a constant after the head (``logit_scale``,
  ``output_multiplier``, ``lm_head_multiplier``, or divides by ``logits_scaling``; the fields TRL 1.16 reads) is
  fused exactly by folding the factor into the temperature, ``softmax(s z / T) = softmax(z / (T / s))``; the
  model's own post-head step is skipped with the rest of its forward. Soft-capped logits
  (``final_logit_softcapping``: a tanh) are not a linear head: such a model is refused by name.
"""

from __future__ import annotations

import contextlib
import math
from contextlib import nullcontext

import torch

from semgrpo.config import ConfigError
from semgrpo.ops import linear_logprobs_and_entropy

# Keyword arguments of a causal LM's forward that its body does not take (PEFT passes several as None).
_HEAD_ONLY_KWARGS = ("labels", "shift_labels", "num_items_in_batch", "logits_to_keep", "return_dict",
                     "output_attentions", "output_hidden_states")


# ------------------------------------------------------------------------------------- which models fuse


def causal_lm(model):
    """The causal LM inside a DeepSpeed engine (``.module``) and a PEFT wrapper (``get_base_model()``)."""
    model = getattr(model, "module", model)
    get_base = getattr(model, "get_base_model", None)  # PEFT's PeftModel; transformers models have no such method
    return get_base() if callable(get_base) else model


def _text_config(lm):
    config = lm.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def logit_multiplier(lm) -> float:
    """The factor the model applies to its LM head's output before the softmax (1.0 when none, NaN when not a
    number). The last field divides, except for HyperCLOVA X, which multiplies by it."""
    config = _text_config(lm)
    for name in ("logit_scale", "output_multiplier", "lm_head_multiplier"):
        value = getattr(config, name, None)
        if value is not None:
            return _number(value)
    divisor = getattr(config, "logits_scaling", None)
    if divisor is None:
        return 1.0
    divisor = _number(divisor)
    if getattr(config, "model_type", None) == "hyperclovax":
        return divisor
    return 1.0 / divisor if divisor != 0 else math.inf


def _number(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def unfusable_reason(model) -> str | None:
    """Why the fused head cannot reproduce this model's log-probs, or None when it can."""
    lm = causal_lm(model)
    cap = getattr(_text_config(lm), "final_logit_softcapping", None)
    if cap is not None:
        return f"its config sets final_logit_softcapping={cap!r} (tanh-capped logits are not a linear LM head)"
    scale = logit_multiplier(lm)
    if not 0 < scale < math.inf:
        return f"its logit scale {scale} (from its config) is not a positive finite number"
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    if type(head) is not torch.nn.Linear:
        return f"its output embedding is {type(head).__name__}, not a plain torch.nn.Linear"
    body = getattr(lm, "base_model", None)
    if body is None or body is lm:
        return f"{type(lm).__name__} has no separate model body (base_model)"
    return None


def check_fusable(model) -> None:
    """A ConfigError naming the reason when the model's head cannot be fused."""
    reason = unfusable_reason(model)
    if reason is not None:
        raise ConfigError(f"semgrpo computes log-probs with a fused LM head, which this model cannot use: {reason}")


# ------------------------------------------------------------------------------------- the projection


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


def project(hidden, weight, bias, ids, *, temperature: float, with_entropy: bool, backend: str | None = None):
    """Differentiable (logp, entropy) [N] of ``softmax((hidden @ weight.T + bias) / temperature)`` at `ids`, whatever
    holds the head: a DTensor is materialised; a ZeRO-3 parameter still partitioned (no module hook fetched it) is
    gathered for a pass without gradient, and refused for one with: its gradient must reach ZeRO-3's hooks through
    the head module's own backward, which only a call of the module arranges (semgrpo's callers make one)."""
    try:  # FSDP2 shards parameters as DTensors; the projection needs the whole matrix (differentiable gather)
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch builds without distributed
        DTensor = ()
    if isinstance(weight, DTensor):
        weight = weight.full_tensor()
    if isinstance(bias, DTensor):
        bias = bias.full_tensor()
    params = _partitioned(weight, bias)
    if params and torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in params)):
        raise RuntimeError("the LM head's parameters are partitioned (DeepSpeed ZeRO-3) and no hook gathered them for "
                           "this differentiable projection: call the head module (DeepSpeed's hooks gather it for its "
                           "forward and backward) or project under torch.no_grad()")
    with _gathered(params):
        return linear_logprobs_and_entropy(hidden, weight, ids, bias=bias, temperature=temperature,
                                           with_entropy=with_entropy, backend=backend)


@contextlib.contextmanager
def _head_as_logprobs(head, ids, on, *, temperature: float, with_entropy: bool, backend: str | None):
    """Within the block, the LM head maps hidden states [B, T, H] aligned with `ids` [B, T] to the pair
    (logp, entropy) of [B, T] tensors, 0 where `on` is False. Two outputs, not one stacked tensor: an entropy
    nobody differentiates gets no gradient, so the op's backward skips its term."""

    def fused_forward(hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logp_on, ent_on = project(hidden[on], head.weight, head.bias, ids[on], temperature=temperature,
                                  with_entropy=with_entropy, backend=backend)
        zeros = torch.zeros(ids.shape, dtype=torch.float32, device=hidden.device)
        return zeros.masked_scatter(on, logp_on), zeros.masked_scatter(on, ent_on)

    head.forward = fused_forward  # an instance attribute shadows the class's forward; hooks still fire
    try:
        yield
    finally:
        del head.forward


def forward_to_logprobs(lm, args, kwargs, *, hidden_of, ids, on, temperature: float, with_entropy: bool,
                        fp32: bool = False, backend: str | None = None):
    """What the fused forward of causal LM `lm` computes: its body on ``(args, kwargs)`` (a forward's arguments),
    ``hidden_of(last_hidden_state)`` -> [B, T, H] the states predicting `ids` [B, T], projected where `on` through the
    head module. Returns fp32 ``(logp, entropy)`` [B, T], 0 off `on` (the entropy 0 without `with_entropy`).
    `fp32` casts the hidden states to fp32 first (TRL's ``cast_lm_head_to_fp32``)."""
    body_kwargs = {k: v for k, v in kwargs.items() if v is not None and k not in _HEAD_ONLY_KWARGS}
    out = lm.base_model(*args, **{**body_kwargs, "use_cache": False})
    hidden = hidden_of(out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0])
    head = lm.get_output_embeddings()
    dev = head.weight.device  # with a device_map the body may end on another device than the head
    hidden = hidden.to(dev).float() if fp32 else hidden.to(dev)
    temperature = temperature / logit_multiplier(lm)
    with _head_as_logprobs(head, ids.to(dev), on.to(dev), temperature=temperature, with_entropy=with_entropy,
                           backend=backend):
        return head(hidden)


@contextlib.contextmanager
def _forward_replaced(lm, forward):
    """Within the block, calls of `lm` (also through PEFT, DeepSpeed and other wrappers) run `forward`; then the
    model's own forward again (an instance attribute that was there before, such as a patched forward, included)."""
    previous = lm.__dict__.get("forward")
    lm.forward = forward
    try:
        yield
    finally:
        if previous is None:
            del lm.forward
        else:
            lm.forward = previous


def completion_logprobs(model, r, *, temperature: float, with_entropy: bool = False):
    """Log-prob (and entropy) of each completion token of rollout `r` under `model`, without the logits.

    Args:
        model: A causal LM, its PEFT wrapper, or a DeepSpeed engine around either (called as is, so that every
            wrapper's forward and hooks run).
        r: A :class:`semgrpo.rollout.Rollout` (left-padded prompts, right-padded completions).
        temperature: The sampling temperature the logits are divided by.
        with_entropy: Also compute the per-token entropy (zeros otherwise). It is logged, not trained on: detached.

    Returns:
        ``(logp, entropy)``, fp32 [N, C]; 0 at padding. `logp` carries the graph when grad is enabled.
    """
    input_ids = torch.cat([r.prompt_ids, r.completion_ids], dim=1)
    attention_mask = torch.cat([r.prompt_mask, r.completion_mask], dim=1)
    # the positions generate() used under left padding
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    c = r.completion_ids.shape[1]
    lm = causal_lm(model)

    def fused(*args, **kwargs):
        return forward_to_logprobs(lm, args, kwargs, hidden_of=lambda last: last[:, -(c + 1):-1],
                                   ids=r.completion_ids, on=r.completion_mask != 0, temperature=temperature,
                                   with_entropy=with_entropy)

    with _forward_replaced(lm, fused):
        logp, ent = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
    return logp, ent.detach()
