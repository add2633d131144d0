"""Token id lists -> padded batches: left-padded prompts for generation, right-padded supervised sequences for SFT.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import torch

IGNORE_INDEX = -100


def is_int(value: Any) -> bool:
    """An integer of any kind (Python's, numpy's), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_pad(pad_token_id: Any) -> int:
    if not is_int(pad_token_id) or pad_token_id < 0:
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
        if not isinstance(seq, (list, tuple)) or not seq or not all(is_int(t) for t in seq):
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
