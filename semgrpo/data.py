"""Records -> validated dicts -> tokenized examples -> padded batches.

Sources: a local JSON-lines file (`.jsonl`, or `.json` holding JSON lines or one JSON array), a
`.parquet` file, a directory holding `{split}.jsonl` / `{split}.json` / `{split}.parquet`, any of these
in the data root as `data:<path>` (`semgrpo.data_root`), or a hub dataset id `owner/name` (only when no
local path of that name exists). JSON lines are parsed
here, line by line, so that every error names the file and the 1-based line. Every record is
checked against its task (see `semgrpo.prompts.TASKS`); over-long samples are dropped by token
count as in the paper (1024 tokens for prompt + reference).
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from semgrpo.data_root import is_data_path, resolve_data_path
from semgrpo.errors import UserError
from semgrpo.files import is_hub_id
from semgrpo.prompts import TASKS, TaskSpec, get_task, render_prompt

__all__ = [
    "DataError", "TASKS", "TaskSpec", "render_prompt", "load_records", "Example", "build_examples",
    "sft_tensors", "collate_left_padded", "collate_sft",
]

IGNORE_INDEX = -100
_LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


class DataError(UserError):
    """A problem with the user's data; the one-line message names file, line and field."""


def _task(task: str | TaskSpec) -> TaskSpec:
    try:
        return get_task(task)
    except ValueError as err:
        raise DataError(str(err)) from None


# ----------------------------------------------------------------------------- reading


def iter_json_lines(path: Path, name: str) -> Iterator[tuple[str, Any]]:
    """Yield (location, parsed value) per non-blank line; a JSON array file yields its items."""
    with path.open("rb") as fh:
        raw_lines = fh.read().split(b"\n")
    first = next((ln.strip() for ln in raw_lines if ln.strip()), b"")
    if first.lstrip(b"\xef\xbb\xbf").startswith(b"["):
        try:
            items = json.loads(b"\n".join(raw_lines).decode("utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DataError(f"{name}: not a valid JSON array ({_json_reason(err)})") from None
        if not isinstance(items, list):
            raise DataError(f"{name}: expected a JSON array or JSON lines, got {type(items).__name__}")
        for i, item in enumerate(items, 1):
            _check_unicode(item, f"{name}: record {i}")
            yield f"{name}: record {i}", item
        return
    for lineno, raw in enumerate(raw_lines, 1):
        where = f"{name}:{lineno}"
        try:
            text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"{where}: not valid UTF-8 (byte {err.start + 1})") from None
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: not valid JSON ({_json_reason(err)})") from None
        _check_unicode(value, where)
        yield where, value


def _check_unicode(value: Any, where: str) -> None:
    """json.loads accepts escapes such as "\\ud800" (half a surrogate pair), which no text can hold."""
    bad = _lone_surrogate(value, "")
    if bad is not None:
        field, char = bad
        place = f'field "{field}"' if field else "the record"
        raise DataError(f"{where}: {place} holds a lone surrogate \\u{ord(char):04x}, not valid Unicode "
                        "(an escape of half a UTF-16 pair)")


def _lone_surrogate(value: Any, path: str) -> tuple[str, str] | None:
    """(field path, offending character) of the first string, or key, with a lone surrogate."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            return path, value[err.start]
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            sub = f"{path}.{key}" if path else str(key)
            found = _lone_surrogate(key, sub) or _lone_surrogate(item, sub)
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _lone_surrogate(item, f"{path}[{i}]")
            if found is not None:
                return found
    return None


def _json_reason(err: Exception) -> str:
    return f"{err.msg} at column {err.colno}" if isinstance(err, json.JSONDecodeError) else str(err)


def _iter_rows(rows: Iterable[Any], name: str) -> Iterator[tuple[str, Any]]:
    for i, row in enumerate(rows, 1):
        yield f"{name}: row {i}", row


def _read_parquet(path: Path, name: str) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as err:  # pyarrow raises several types for corrupt files
        raise DataError(f"{name}: not a readable parquet file ({err})") from None
    return _iter_rows(rows, name)


def _read_hub(source: str, split: str) -> Iterator[tuple[str, Any]]:
    import datasets

    try:
        ds = datasets.load_dataset(source, split=split)
    except Exception as err:  # offline mode, missing split, unknown id...
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(
            f"{source}: not a local path, and loading it as a hub dataset (split {split!r}) failed: {reason}"
        ) from None
    return _iter_rows(ds, f"{source}[{split}]")


def _open_source(source: str | Path, split: str) -> tuple[str, Iterator[tuple[str, Any]]]:
    """Resolve `source` to (name for messages, iterator of (location, raw record))."""
    path = resolve_data_path(source)  # a data: path must exist in the data root, or the error says how to fetch it
    name = str(path) if is_data_path(source) else str(source)
    if path.is_dir():
        for suffix in _LOCAL_SUFFIXES:
            candidate = path / f"{split}{suffix}"
            if candidate.is_file():
                path, name = candidate, str(candidate)
                break
        else:
            wanted = ", ".join(f"{split}{s}" for s in _LOCAL_SUFFIXES)
            raise DataError(f"{name}: directory holds none of {wanted}")
    elif not path.exists():
        if is_hub_id(name) and not name.endswith(_LOCAL_SUFFIXES):
            return name, _read_hub(name, split)
        raise DataError(f"{name}: file not found")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return name, iter_json_lines(path, name)
    if suffix == ".parquet":
        return name, _read_parquet(path, name)
    raise DataError(
        f"{name}: unsupported file type {suffix or '(none)'!r} (expected .jsonl, .json, .parquet or a directory)"
    )


def _validate(raw: Any, where: str, spec: TaskSpec) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected a JSON object with keys {_keys(spec)}, got {type(raw).__name__}")
    record: dict[str, str] = {}
    rid = raw.get("id")
    if rid is None:
        record["id"] = where.replace(": row ", ":").replace(": record ", ":")
    elif isinstance(rid, bool) or not isinstance(rid, (str, int)):
        raise DataError(f'{where}: field "id" must be a string or an integer, got {type(rid).__name__}')
    else:
        record["id"] = str(rid)
    for field in spec.required_fields:
        if field not in raw:
            raise DataError(f'{where}: field "{field}" missing (expected keys: {_keys(spec)})')
        value = raw[field]
        if not isinstance(value, str):
            raise DataError(f'{where}: field "{field}" must be a non-empty string, got {type(value).__name__}')
        if not value.strip():
            raise DataError(f'{where}: field "{field}" must be a non-empty string, got {value!r}')
        record[field] = value
    return record


def _keys(spec: TaskSpec) -> str:
    return ", ".join(("id",) + spec.required_fields)


def load_records(source: str | Path, *, task: str | TaskSpec, split: str = "train") -> list[dict[str, str]]:
    """Load and validate the records of one split.

    Args:
        source: A `.jsonl`/`.json` file (JSON lines, or one JSON array), a `.parquet` file, a
            directory holding `{split}.jsonl` (or `.json`, `.parquet`), a `data:<path>` in the data
            root, or, when no such local path exists and it looks like `owner/name`, a hub dataset id.
        task: Task name (a key of `TASKS`) or a `TaskSpec`; decides the required fields.
        split: Split to read from a directory or hub dataset; ignored for a file.

    Returns:
        One dict per record, in file order, holding "id" (a string; `"<file>:<line>"` when the
        record has none) and the task's required fields. Blank lines are skipped.

    Raises:
        DataError: Missing file, unreadable line, missing or mistyped field, or no records; the
            message names the file, the 1-based line (or row) and the field.
        DataRootError: A `data:` path that the data root does not hold.
    """
    spec = _task(task)
    if not isinstance(source, (str, Path)) or not str(source):
        raise DataError(f"source must be a non-empty path or dataset id, got {source!r}")
    if not isinstance(split, str) or not split:
        raise DataError(f"split must be a non-empty string, got {split!r}")
    name, rows = _open_source(source, split)
    records = [_validate(raw, where, spec) for where, raw in rows]
    if not records:
        raise DataError(f"{name}: no records found")
    return records


# ----------------------------------------------------------------------------- examples


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


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _positive_int(value: Any, name: str) -> int:
    if not _is_int(value) or value < 1:
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
    spec = _task(task)
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


# ----------------------------------------------------------------------------- tensors


def sft_tensors(example: Example, *, eos_token_id: int, max_length: int) -> dict[str, list[int]]:
    """Supervised sequence for one example: prompt + reference + eos, loss on the answer only.

    Labels are -100 on the prompt tokens. The sequence is cut to `max_length` tokens by dropping
    tokens at its right end; when the prompt alone fills `max_length`, every label is -100.

    Shape:
        input_ids, labels: [min(P + R + 1, max_length)] with P, R the prompt and reference lengths.

    Raises:
        ValueError: `eos_token_id` not a non-negative int, or `max_length` not a positive int.
    """
    if not _is_int(eos_token_id) or eos_token_id < 0:
        raise ValueError(f"eos_token_id must be a non-negative int, got {eos_token_id!r}")
    _positive_int(max_length, "max_length")
    answer = list(example.reference_ids) + [int(eos_token_id)]
    input_ids = list(example.prompt_ids) + answer
    labels = [IGNORE_INDEX] * len(example.prompt_ids) + answer
    return {"input_ids": input_ids[:max_length], "labels": labels[:max_length]}


def _check_pad(pad_token_id: Any) -> int:
    if not _is_int(pad_token_id) or pad_token_id < 0:
        raise ValueError(
            f"pad_token_id must be a non-negative int, got {pad_token_id!r} (set tokenizer.pad_token)"
        )
    return int(pad_token_id)


def _check_seqs(seqs: Any, what: str) -> list[list[int]]:
    if not isinstance(seqs, (list, tuple)) or not seqs:
        raise ValueError(f"{what} must be a non-empty list of token id lists, got {seqs!r:.80}")
    out = []
    for i, seq in enumerate(seqs):
        if isinstance(seq, torch.Tensor):
            seq = seq.tolist()
        if not isinstance(seq, (list, tuple)) or not seq or not all(_is_int(t) for t in seq):
            raise ValueError(f"{what}[{i}] must be a non-empty list of ints, got {seq!r:.80}")
        out.append(list(seq))
    return out


def collate_left_padded(sequences: Sequence[Sequence[int]], *, pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists into a batch for generation.

    Shape:
        sequences: B lists of lengths L_b >= 1.
        Returns input_ids [B, L] (int64) and attention_mask [B, L] (int64, 1 on real tokens),
        L = max L_b; padding sits on the left so that every row ends at column L - 1.

    Raises:
        ValueError: Empty batch, empty sequence or bad `pad_token_id`.
    """
    pad = _check_pad(pad_token_id)
    seqs = _check_seqs(sequences, "sequences")
    length = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), length), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for row, seq in enumerate(seqs):
        input_ids[row, length - len(seq) :] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, length - len(seq) :] = 1
    return input_ids, attention_mask


def collate_sft(batch: Sequence[dict[str, Sequence[int]]], *, pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad `sft_tensors` outputs into a training batch.

    Shape:
        batch: B dicts with "input_ids" and "labels" of equal length L_b >= 1.
        Returns "input_ids" [B, L], "attention_mask" [B, L], "labels" [B, L] (int64), L = max L_b;
        padding on the right, labels -100 there.

    Raises:
        ValueError: Empty batch, a dict without those keys or with unequal lengths, bad pad id.
    """
    pad = _check_pad(pad_token_id)
    if not isinstance(batch, (list, tuple)) or not batch:
        raise ValueError(f"batch must be a non-empty list of dicts with input_ids and labels, got {batch!r:.80}")
    for i, item in enumerate(batch):
        if not isinstance(item, dict) or "input_ids" not in item or "labels" not in item:
            raise ValueError(f"batch[{i}] must be a dict with keys input_ids and labels, got {item!r:.80}")
        if len(item["input_ids"]) != len(item["labels"]):
            raise ValueError(
                f"batch[{i}]: input_ids has {len(item['input_ids'])} tokens but labels has {len(item['labels'])}"
            )
    ids = _check_seqs([item["input_ids"] for item in batch], "input_ids")
    labels = _check_seqs([item["labels"] for item in batch], "labels")
    length = max(len(s) for s in ids)
    out = {
        "input_ids": torch.full((len(ids), length), pad, dtype=torch.long),
        "attention_mask": torch.zeros((len(ids), length), dtype=torch.long),
        "labels": torch.full((len(ids), length), IGNORE_INDEX, dtype=torch.long),
    }
    for row, (seq, lab) in enumerate(zip(ids, labels)):
        out["input_ids"][row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        out["attention_mask"][row, : len(seq)] = 1
        out["labels"][row, : len(lab)] = torch.tensor(lab, dtype=torch.long)
    return out
