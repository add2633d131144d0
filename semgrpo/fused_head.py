"""Per-token completion log-probs from the model with its LM head fused into the log-prob op.

The GRPO passes (policy, old, reference) need ``log p(completion token)`` and, for logging, the entropy;
never the logits. So for the duration of one forward the LM head's ``forward`` is replaced by
:func:`semgrpo.ops.linear_logprobs_and_entropy` on the head's own weight: it streams the vocabulary in fp32
tiles and returns [B, C] values where the head would have written [B, C, V] logits (plus their fp32 copy and
its gradient in the loss).

Why inside the head's forward rather than on the model's hidden states afterwards: the model's own forward
runs unchanged, so DeepSpeed ZeRO-3's module hooks do what they do for any ``nn.Linear``. The head's weight is
gathered for its forward and gathered again before its backward (the op's backward re-reads it). Tied
embeddings need nothing special: the weight is the parameter the hooks manage. Under the gathered pass the
weight is already whole and the hooks are off.
"""

from __future__ import annotations

import contextlib

import torch

from semgrpo.ops import linear_logprobs_and_entropy

# Config attributes of models whose logits are not ``hidden @ W.T + b``: a post-head transform the fused op
# does not apply (Gemma 2/3 soft-capping, Cohere's logit_scale, Granite's logits_scaling).
_LOGIT_TRANSFORMS = {"final_logit_softcapping": None, "logit_scale": 1.0, "logits_scaling": 1.0}


def unfusable_reason(model) -> str | None:
    """Why the fused head cannot reproduce this model's logits, or None when it can."""
    inner = _unwrap(model)
    config = getattr(inner, "config", None)
    for name, neutral in _LOGIT_TRANSFORMS.items():
        value = getattr(config, name, None)
        if value is not None and value != neutral:
            return f"its config sets {name}={value!r} (the logits are transformed after the LM head)"
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if type(head) is not torch.nn.Linear:
        return f"its output embedding is {type(head).__name__}, not a plain torch.nn.Linear"
    return None


def check_fusable(model) -> None:
    """Raise a ValueError naming the reason when the model's head cannot be fused."""
    reason = unfusable_reason(model)
    if reason is not None:
        raise ValueError(f"semgrpo computes log-probs with a fused LM head, which this model cannot use: {reason}")


def _unwrap(model):
    """The model inside a DeepSpeed engine (``.module``); the model itself otherwise."""
    return getattr(model, "module", model)


@contextlib.contextmanager
def _head_as_logprobs(model, ids: torch.Tensor, mask: torch.Tensor, *, temperature: float, with_entropy: bool):
    """Within the block, the model's LM head maps its input [B, C+1, H] to [B, C, 2]: per completion token
    (logp, entropy), 0 where `mask` is 0. Position t of the input predicts ``ids[:, t]``; the last is unused."""
    head = _unwrap(model).get_output_embeddings()
    on = mask != 0

    def fused_forward(hidden: torch.Tensor) -> torch.Tensor:
        h = hidden[:, :-1]
        logp_on, ent_on = linear_logprobs_and_entropy(h[on], head.weight, ids[on], bias=head.bias,
                                                      temperature=temperature, with_entropy=with_entropy)
        zeros = torch.zeros(ids.shape, dtype=torch.float32, device=hidden.device)
        # the entropy is logged, not trained on: detached, so the op's backward skips its term
        return torch.stack((zeros.masked_scatter(on, logp_on), zeros.masked_scatter(on, ent_on.detach())), -1)

    head.forward = fused_forward  # an instance attribute shadows the class's forward; hooks still fire
    try:
        yield
    finally:
        del head.forward


def completion_logprobs(model, r, *, temperature: float, with_entropy: bool = False):
    """Log-prob (and entropy) of each completion token of rollout `r` under `model`, without the logits.

    Args:
        model: A causal LM, its PEFT wrapper, or a DeepSpeed engine around either.
        r: A :class:`semgrpo.rollout.Rollout` (left-padded prompts, right-padded completions).
        temperature: The sampling temperature the logits are divided by.
        with_entropy: Also compute the per-token entropy (zeros otherwise).

    Returns:
        ``(logp, entropy)``, fp32 [N, C]; 0 at padding. `logp` carries the graph when grad is enabled.
    """
    input_ids = torch.cat([r.prompt_ids, r.completion_ids], dim=1)
    attention_mask = torch.cat([r.prompt_mask, r.completion_mask], dim=1)
    # the positions generate() used under left padding
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    c = r.completion_ids.shape[1]
    with _head_as_logprobs(model, r.completion_ids, r.completion_mask, temperature=temperature,
                           with_entropy=with_entropy):
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                    logits_to_keep=c + 1, use_cache=False).logits
    return out[..., 0], out[..., 1]
