"""Examples: records rendered with their task's prompt, tokenized and length-filtered (over-long samples are dropped by
token count as in the paper: 1024 tokens for prompt + reference); and an example's supervised sequence for SFT.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from semgrpo.data.batches import IGNORE_INDEX, is_int
from semgrpo.data.records import DataError, task_spec
from semgrpo.prompts import TaskSpec, render_prompt


@dataclass(frozen=True)
class Example:
    """One tokenized sample.

    Attributes:
        id: Record id.
        prompt: Rendered prompt (chat template applied when the tokenizer has one).
        prompt_ids: Tokens of `prompt`, no special tokens added.
        reference: Reference output text.
        reference_ids: Tokens of `reference`, no special tokens, no eos appended.
    """

    id: str
    prompt: str
    prompt_ids: list[int]
    reference: str
    reference_ids: list[int]


def _positive_int(value: Any, name: str) -> int:
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def build_examples(
    records: Sequence[dict[str, Any]],
    *,
    task: str | TaskSpec,
    tokenizer: Any,
    max_prompt_length: int,
    max_sample_tokens: int = 1024,
    source: str = "data",
    log: Callable[[str], Any] | None = None,
) -> list[Example]:
    """Render, tokenize and length-filter records.

    A record is dropped when its prompt is longer than `max_prompt_length` tokens, or else when
    prompt + reference is longer than `max_sample_tokens` tokens (paper: 1024). The counts are
    reported through `log`, in one line, when anything was dropped.

    Args:
        records: Records as returned by `load_records` for the same task.
        task: Task name or `TaskSpec`.
        tokenizer: Hugging Face tokenizer (callable on a list of strings).
        max_prompt_length: Longest prompt kept, in tokens.
        max_sample_tokens: Longest prompt + reference kept, in tokens.
        source: Name of the data used in messages.
        log: Callable taking one message string, or None.

    Returns:
        The kept examples, in record order.

    Raises:
        DataError: A record lacks a field, or no example is left after filtering.
        ValueError: A length limit is not a positive int.
    """
    spec = task_spec(task)
    _positive_int(max_prompt_length, "max_prompt_length")
    _positive_int(max_sample_tokens, "max_sample_tokens")
    if log is not None and not callable(log):
        raise ValueError(f"log must be a callable taking a str or None, got {type(log).__name__}")
    prompts, references, ids = [], [], []
    for i, rec in enumerate(records, 1):
        where = f"{source}: record {i}"
        if not isinstance(rec, dict):
            raise DataError(f"{where}: expected a dict, got {type(rec).__name__}")
        for field in (spec.source_field, spec.target_field):
            if not isinstance(rec.get(field), str) or not rec[field]:
                got = type(rec.get(field)).__name__
                raise DataError(f'{where}: field "{field}" must be a non-empty string, got {got}')
        ids.append(str(rec.get("id", f"{source}:{i}")))
        prompts.append(render_prompt(spec, rec[spec.source_field], tokenizer))
        references.append(rec[spec.target_field])
    if not prompts:
        raise DataError(f"{source}: no examples left after filtering: 0 records")
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    reference_ids = tokenizer(references, add_special_tokens=False)["input_ids"]
    kept: list[Example] = []
    long_prompt = long_sample = 0
    for rid, prompt, p_ids, ref, r_ids in zip(ids, prompts, prompt_ids, references, reference_ids):
        if len(p_ids) > max_prompt_length:
            long_prompt += 1
        elif len(p_ids) + len(r_ids) > max_sample_tokens:
            long_sample += 1
        else:
            kept.append(Example(id=rid, prompt=prompt, prompt_ids=list(p_ids), reference=ref,
                                reference_ids=list(r_ids)))
    dropped = (
        f"{len(prompts)} records, {long_prompt} with prompt longer than {max_prompt_length} tokens, "
        f"{long_sample} with prompt + reference longer than {max_sample_tokens} tokens"
    )
    if not kept:
        raise DataError(f"{source}: no examples left after filtering: {dropped}")
    if log is not None and (long_prompt or long_sample):
        log(f"{source}: kept {len(kept)} of {len(prompts)} ({long_prompt + long_sample} over max_prompt_length / "
            f"max_sample_tokens: {long_prompt} with prompt > {max_prompt_length} tokens, {long_sample} with "
            f"prompt + reference > {max_sample_tokens} tokens)")
    return kept


def sft_tensors(example: Example, *, eos_token_id: int, max_length: int) -> dict[str, list[int]]:
    """Supervised sequence for one example: prompt + reference + eos, loss on the answer only.

    Labels are -100 on the prompt tokens. The sequence is cut to `max_length` tokens by dropping
    tokens at its right end; when the prompt alone fills `max_length`, every label is -100.

    Shape:
        input_ids, labels: [min(P + R + 1, max_length)] with P, R the prompt and reference lengths.

    Raises:
        ValueError: `eos_token_id` not a non-negative int, or `max_length` not a positive int.
    """
    if not is_int(eos_token_id) or eos_token_id < 0:
        raise ValueError(f"eos_token_id must be a non-negative int, got {eos_token_id!r}")
    _positive_int(max_length, "max_length")
    answer = list(example.reference_ids) + [int(eos_token_id)]
    input_ids = list(example.prompt_ids) + answer
    labels = [IGNORE_INDEX] * len(example.prompt_ids) + answer
    return {"input_ids": input_ids[:max_length], "labels": labels[:max_length]}
