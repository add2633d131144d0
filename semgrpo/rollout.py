"""Generation under ZeRO-3 and the tensors one GRPO step works on.

Under ZeRO-3 every forward gathers each layer's shards; doing that for every generated token is what
makes naive generation 10-100x slower (TRL #3858). We gather the full parameter set once per rollout
(DeepSpeed's `unwrap_model_for_generation`, which also takes ZeRO's per-module hooks off) and keep it
gathered for the step's other no-grad passes (reward, old and reference log-probs), then sample with the
lean KV-cache loop below. When the model does not fit on one device, `gather=False` falls back to
HF `generate` with `synced_gpus`, which gathers layer by layer and keeps ranks in lockstep; it then runs
with `hf_generation_config` alone, never with the checkpoint's own generation settings.

The sampling loop (a lean KV-cache decode, below the Rollout code) and merged-adapter sampling (at the end)
live here too: they are the rollout's own parts.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from transformers import DynamicCache, GenerationConfig

from semgrpo.data.batches import collate_left_padded


@dataclass
class Rollout:
    """Prompts (left padded) and completions (right padded, cut after the first eos) of one batch.

    Shape:
        prompt_ids, prompt_mask: [N, P]; completion_ids, completion_mask: [N, C]
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    def select(self, rows: torch.Tensor) -> Rollout:
        return Rollout(*(t[rows] for t in (self.prompt_ids, self.prompt_mask, self.completion_ids,
                                           self.completion_mask)))

    def truncated(self, eos_ids: list[int]) -> torch.Tensor:
        """[N] bool: the completions that hold no eos, i.e. were cut off at the length limit."""
        is_eos = torch.isin(self.completion_ids, torch.tensor(eos_ids, device=self.completion_ids.device))
        return ~(is_eos & (self.completion_mask != 0)).any(dim=1)

    def masking(self, rows: torch.Tensor | None) -> Rollout:
        """The rollout with the completions of the [N] bool `rows` masked out (None: unchanged), as TRL's
        mask_truncated_completions does: they stay in the batch with no token in the loss."""
        if rows is None:
            return self
        mask = self.completion_mask * (~rows.to(self.completion_mask.device)).to(self.completion_mask.dtype)[:, None]
        return Rollout(self.prompt_ids, self.prompt_mask, self.completion_ids, mask)

    @staticmethod
    def cat(parts: list[Rollout], *, pad_id: int) -> Rollout:
        """Rows of several rollouts in order; prompts padded on the left and completions on the right to the
        widest part (padding is masked out, so each row's tokens and positions are unchanged)."""
        p_width = max(r.prompt_ids.shape[1] for r in parts)
        c_width = max(r.completion_ids.shape[1] for r in parts)

        def padded(t, width, *, left, value):
            extra = width - t.shape[1]
            return torch.nn.functional.pad(t, (extra, 0) if left else (0, extra), value=value)

        return Rollout(torch.cat([padded(r.prompt_ids, p_width, left=True, value=pad_id) for r in parts]),
                       torch.cat([padded(r.prompt_mask, p_width, left=True, value=0) for r in parts]),
                       torch.cat([padded(r.completion_ids, c_width, left=False, value=pad_id) for r in parts]),
                       torch.cat([padded(r.completion_mask, c_width, left=False, value=0) for r in parts]))



@contextlib.contextmanager
def generation_model(engine, *, gather: bool):
    """The module to sample and score with (eval mode): parameters gathered once under ZeRO-3 when `gather`."""
    stage = engine.zero_optimization_stage()
    was_training = engine.module.training
    engine.module.eval()
    try:
        if stage == 3 and gather:
            from deepspeed.runtime.zero.stage3 import unwrap_model_for_generation

            with unwrap_model_for_generation(engine):
                yield engine.module
        else:
            yield engine.module
    finally:
        engine.module.train(was_training)


class GatheredWeights:
    """The step's model (eval mode) with its ZeRO-3 parameters gathered once, until `release()`.

    A GRPO step keeps the gather through sampling, scoring, the no-grad log-prob passes and, optionally, the
    first policy pass, then releases it right before the optimizer writes partitioned weights. `release()` is
    idempotent; leaving the `with` block releases too (also on an error).
    """

    def __init__(self, engine, *, gather: bool):
        self._context = generation_model(engine, gather=gather)
        self.model = self._context.__enter__()

    def release(self) -> None:
        context, self._context = self._context, None
        if context is not None:
            context.__exit__(None, None, None)

    def __enter__(self) -> GatheredWeights:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def needs_synced_generation(engine, *, gather: bool) -> bool:
    """ZeRO-3 without the gather: every rank must run the same number of forwards (HF `synced_gpus`)."""
    return engine.zero_optimization_stage() == 3 and not gather and torch.distributed.get_world_size() > 1


def cut_after_eos(tokens: torch.Tensor, eos_ids: list[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask everything after the first eos (the eos itself is kept: the policy learns to stop)."""
    is_eos = torch.isin(tokens, torch.tensor(eos_ids, device=tokens.device))
    seen_before = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
    mask = (~seen_before).long()
    return tokens.masked_fill(mask == 0, pad_id), mask


def hf_generation_config(*, greedy: bool, temperature: float, top_p: float, max_new_tokens: int,
                         eos_ids: list[int], pad_id: int) -> GenerationConfig:
    """HF generation settings holding only what the GRPO log-probs model: greedy, or sampling with
    temperature and top-p (top-k off); plus length, stop and pad tokens."""
    sampling = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=temperature, top_p=top_p,
                                                          top_k=0)
    return GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=list(eos_ids), pad_token_id=pad_id,
                            use_cache=True, num_beams=1, **sampling)


@contextlib.contextmanager
def only_generation_config(model, config: GenerationConfig):
    """For the duration, `model.generate` sees `config` as the model's own generation config too.

    Passing `generation_config=config` alone is not enough: HF `generate` fills every setting that `config`
    leaves unset (None) from `model.generation_config`, so a checkpoint's repetition_penalty, min_p, top_k,
    no_repeat_ngram_size, ... would still shape the samples, and the log-probs do not model them. PEFT's
    `generate` copies its wrapper's config (read through to the base model's) onto the base model, so the
    base model's is the one to replace.
    """
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    own = target.generation_config
    target.generation_config = config
    try:
        yield
    finally:
        target.generation_config = own


@torch.no_grad()
def generate(model, prompts: list[list[int]], *, device, pad_id: int, eos_ids: list[int], max_new_tokens: int,
             temperature: float, top_p: float, greedy: bool = False, batch_size: int = 0,
             synced_gpus: bool = False) -> Rollout:
    """Sample one completion per prompt (repeat prompts G times beforehand for a GRPO group).

    Args:
        model: the module `generation_model` yields.
        synced_gpus: `needs_synced_generation(...)`; then HF `generate` keeps the ranks in lockstep, with the
            settings of `hf_generation_config` and none of the model's own.

    Shape:
        prompts: N lists of token ids -> Rollout with N rows
    """
    prompt_ids, prompt_mask = (t.to(device) for t in collate_left_padded(prompts, pad_token_id=pad_id))
    pieces = []
    batch_size = batch_size or len(prompts)
    hf_config = None
    settings = contextlib.nullcontext()
    if synced_gpus:
        hf_config = hf_generation_config(greedy=greedy, temperature=temperature, top_p=top_p,
                                         max_new_tokens=max_new_tokens, eos_ids=eos_ids, pad_id=pad_id)
        settings = only_generation_config(model, hf_config)
    with settings:
        for start in range(0, len(prompts), batch_size):
            ids, mask = prompt_ids[start:start + batch_size], prompt_mask[start:start + batch_size]
            if synced_gpus:
                out = model.generate(input_ids=ids, attention_mask=mask, generation_config=hf_config,
                                     synced_gpus=True)
                pieces.append(out[:, ids.shape[1]:])
            else:
                pieces.append(sample_completions(model, ids, mask, max_new_tokens=max_new_tokens,
                                                 eos_ids=eos_ids, pad_id=pad_id, temperature=temperature,
                                                 top_p=top_p, greedy=greedy))
    width = max(p.shape[1] for p in pieces)
    completions = torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1]), value=pad_id) for p in pieces])
    completion_ids, completion_mask = cut_after_eos(completions, eos_ids, pad_id)
    return Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask)


# ----------------------------------------------------------------------------------------------------
# Sampling loop
#
# A lean batched sampling loop with a KV cache: what a GRPO rollout needs and nothing more.
#
# HF `generate` runs a general pipeline per token (logits processors, stopping criteria, cache and input
# bookkeeping); on a launch-bound decode step that pipeline costs as much as the model. This loop keeps only
# temperature, top-p (top-k off), greedy, eos and pad handling, and stopping once every sequence has ended.
# Its next-token distribution equals HF's TemperatureLogitsWarper + TopPLogitsWarper (tested) and it draws one
# multinomial per step as `generate` does, so with the same seed samples match `generate`'s up to float
# rounding at the boundaries of the draw; greedy output is identical (tested).

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
    # Same positions as fused_head.completion_logprobs() uses for the log-prob passes.
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


# ----------------------------------------------------------------------------------------------------
# Merged-adapter sampling
#
# Sampling from the LoRA policy with the adapter merged into the base weights, exactly undone afterwards.
#
# Each LoRA linear costs two extra matmuls plus PEFT's Python per call; in a launch-bound decode step that is
# a large share of the time. `merged_adapter` swaps each targeted base weight for a merged copy W + dW and
# switches the adapter path off, so a decode step runs plain linears. The original weight tensors are put
# back on exit (pointer swap, no arithmetic), so the base stays bit-identical; PEFT's own merge/unmerge would
# round W + dW - dW in bf16 and drift a little every step.
#
# Costs: one extra copy of the targeted weights while the context is open, and sampling from W + dW rounded
# to the model dtype, which differs from the unmerged forward by float rounding (as any merged inference
# engine does). Opt-in through `grpo.merge_adapter_for_generation`.

def _lora_layers(model):
    from peft.tuners.lora.layer import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


@contextlib.contextmanager
def merged_adapter(model, *, enabled: bool = True):
    """`model` with its active LoRA adapters merged into the base weights (a no-op when not `enabled`).

    Raises:
        ValueError: the model has no LoRA layers, or uses a variant that does not merge into one weight
            (DoRA, a non-Linear base layer).
    """
    if not enabled:
        yield model
        return
    layers = _lora_layers(model)
    if not layers:
        raise ValueError("merge_adapter_for_generation needs a LoRA policy; the model has no LoRA layers")
    originals = []
    try:
        with torch.no_grad():
            for layer in layers:
                base = layer.get_base_layer()
                if not isinstance(base, torch.nn.Linear):
                    raise ValueError(f"merge_adapter_for_generation supports LoRA on nn.Linear only, got "
                                     f"{type(base).__name__}")
                active = [a for a in layer.active_adapters if a in layer.lora_A]
                if any(layer.use_dora.get(a, False) for a in active):
                    raise ValueError("merge_adapter_for_generation does not support DoRA adapters")
                if not active:
                    continue
                weight = base.weight
                merged = weight.data.to(torch.float32, copy=True)  # .float() would alias fp32
                for name in active:
                    merged += layer.get_delta_weight(name).float()
                originals.append((weight, weight.data))
                weight.data = merged.to(weight.dtype)
        with model.disable_adapter():
            yield model
    finally:
        for weight, data in originals:
            weight.data = data
