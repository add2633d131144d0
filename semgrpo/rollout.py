"""Generation under ZeRO-3 and the tensors one GRPO step works on.

Under ZeRO-3 every forward gathers each layer's shards; doing that for every generated token is what
makes naive generation 10-100x slower (TRL #3858). We gather the full parameter set once per rollout
(DeepSpeed's `unwrap_model_for_generation`, which also takes ZeRO's per-module hooks off) and keep it
gathered for the step's other no-grad passes (reward, old and reference log-probs), then sample with the
lean KV-cache loop of decode.py. When the model does not fit on one device, `gather=False` falls back to
HF `generate` with `synced_gpus`, which gathers layer by layer and keeps ranks in lockstep; it then runs
with `hf_generation_config` alone, never with the checkpoint's own generation settings.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from transformers import GenerationConfig

from semgrpo.data import collate_left_padded
from semgrpo.decode import sample_completions


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

    def select(self, rows: torch.Tensor) -> "Rollout":
        return Rollout(*(t[rows] for t in (self.prompt_ids, self.prompt_mask, self.completion_ids,
                                           self.completion_mask)))

    def chunks(self, size: int):
        for start in range(0, len(self), size):
            yield self.select(torch.arange(start, min(start + size, len(self))))


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


def completion_logits(model, r: Rollout) -> torch.Tensor:
    """Logits that predict each completion token, computed only for the completion positions.

    Shape:
        returns [N, C, V], a strided view aligned with r.completion_ids
    """
    input_ids = torch.cat([r.prompt_ids, r.completion_ids], dim=1)
    attention_mask = torch.cat([r.prompt_mask, r.completion_mask], dim=1)
    # Same positions as generate() used under left padding.
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    c = r.completion_ids.shape[1]
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                logits_to_keep=c + 1, use_cache=False)
    return out.logits[:, :-1]
