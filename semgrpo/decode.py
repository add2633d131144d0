"""A lean batched sampling loop with a KV cache: what a GRPO rollout needs and nothing more.

HF `generate` runs a general pipeline per token (logits processors, stopping criteria, cache and input
bookkeeping); on a launch-bound decode step that pipeline costs as much as the model. This loop keeps only
temperature, top-p (top-k off), greedy, eos and pad handling, and stopping once every sequence has ended.
Its next-token distribution equals HF's TemperatureLogitsWarper + TopPLogitsWarper (tested) and it draws one
multinomial per step as `generate` does, so with the same seed samples match `generate`'s up to float
rounding at the boundaries of the draw; greedy output is identical (tested).
"""
from __future__ import annotations

import torch
from transformers import DynamicCache

# How often the loop asks the device whether every sequence has ended. Asking is a host-device sync; on a
# GPU asking every token would stall the kernel queue, at the price of at most this many wasted steps.
STOP_CHECK_EVERY_CUDA = 8


def check_sampling(temperature: float, top_p: float) -> None:
    """Raises ValueError naming the setting when temperature <= 0 or top_p is outside (0, 1]."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for sampling, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def next_token_probs(logits: torch.Tensor, *, temperature: float, top_p: float) -> torch.Tensor:
    """Sampling distribution of the next token: softmax(logits / T) restricted to the top-p nucleus.

    The nucleus is the smallest set of most likely tokens whose mass reaches `top_p` (the most likely token is
    always kept). Returned probabilities are not renormalised (multinomial does not need it).

    Shape:
        logits: [N, V] -> [N, V] float32
    """
    check_sampling(temperature, top_p)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
    return torch.zeros_like(probs).scatter_(-1, order, sorted_probs)


@torch.no_grad()
def sample_completions(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, max_new_tokens: int,
                       eos_ids: list[int], pad_id: int, temperature: float = 1.0, top_p: float = 1.0,
                       greedy: bool = False) -> torch.Tensor:
    """Generate up to `max_new_tokens` tokens per left-padded prompt; after its eos a row gets `pad_id`.

    Args:
        model: a causal LM (HF or PEFT) accepting position_ids, past_key_values and logits_to_keep.

    Shape:
        input_ids, attention_mask: [N, P] (left padded) -> [N, T] with T <= max_new_tokens; T is shorter only
        when every row has ended.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not greedy:
        check_sampling(temperature, top_p)  # before the prefill, not after it
    device = input_ids.device
    eos = torch.tensor(eos_ids, device=device)
    check_every = STOP_CHECK_EVERY_CUDA if device.type == "cuda" else 1
    mask = attention_mask.long()
    # Same positions as completion_logits() uses for the log-prob passes.
    position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)
    next_position = position_ids[:, -1:] + 1
    cache = DynamicCache()
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, past_key_values=cache,
                use_cache=True, logits_to_keep=1)
    ended = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=device)
    tokens = []
    for step in range(max_new_tokens):
        logits = out.logits[:, -1]
        if greedy:
            token = logits.argmax(dim=-1)
        else:
            probs = next_token_probs(logits, temperature=temperature, top_p=top_p)
            token = torch.multinomial(probs, num_samples=1).squeeze(1)
        token = token.masked_fill(ended, pad_id)
        tokens.append(token)
        ended = ended | torch.isin(token, eos)
        if step + 1 == max_new_tokens or ((step + 1) % check_every == 0 and bool(ended.all())):
            break
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=next_position,
                    past_key_values=cache, use_cache=True)
        next_position = next_position + 1
    return torch.stack(tokens, dim=1)
