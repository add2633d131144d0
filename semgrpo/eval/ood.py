"""Out-of-distribution text and the drift of an adapted model from its base on it (paper Appendix C).

The alignment tax is measured on plain text the adaptation never targets (the paper: CMRC 2018
passages): per token, the NLL of the text under both models and KL(base || adapted) of their
next-token distributions. `bin/evaluate.py` and the trainer's live meter (`semgrpo.eval.tax_meter`) share
the loading, windowing and per-token math here.

Accepted passage sources (`load_passages`):

- CMRC 2018 / SQuAD-style JSON: every ``data[].paragraphs[].context`` (``.json``);
- JSONL: one record per line with a ``text`` or ``context`` field (``.jsonl``);
- plain text: one passage per non-empty line (any other suffix).

Any of them may sit in the data root, named `data:<path>` (`semgrpo.data_root`).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from semgrpo.data import DataError, iter_json_lines
from semgrpo.data_root import resolve_data_path
from semgrpo.errors import UserError
from semgrpo.eval.metrics import token_nll_kl

__all__ = ["OODError", "load_passages", "encode_windows", "pad_windows", "drift_per_token"]

LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class OODError(UserError):
    """An OOD passage source that is missing, malformed or empty."""


def load_passages(source: str | Path, *, limit: int = 0) -> list[str]:
    """Passages from `source` in file order, de-duplicated (CMRC repeats a context for each question).

    Args:
        source: File path or `data:` path (see the module docstring for formats).
        limit: Keep the first `limit` passages; 0 keeps all.

    Raises:
        OODError: missing file, malformed JSON (names file and line), no passage.
        DataRootError: a `data:` path that the data root does not hold.
    """
    path = resolve_data_path(source)
    if not path.is_file():
        raise OODError(f"OOD passage file not found: {path}")
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            texts = [p["context"] for article in data["data"] for p in article["paragraphs"]]
        except json.JSONDecodeError as exc:
            raise OODError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
        except (KeyError, TypeError):
            raise OODError(f"{path}: expected SQuAD/CMRC JSON with data[].paragraphs[].context") from None
    elif path.suffix == ".jsonl":
        texts = []
        try:
            for where, record in iter_json_lines(path, str(path)):
                text = record.get("text", record.get("context")) if isinstance(record, dict) else None
                if not isinstance(text, str):
                    raise OODError(f"{where}: expected an object with a string 'text' or 'context' field")
                texts.append(text)
        except DataError as exc:  # the shared JSONL reader names file and line; keep one error type here
            raise OODError(str(exc)) from None
    else:
        texts = path.read_text(encoding="utf-8").splitlines()
    passages = list(dict.fromkeys(t.strip() for t in texts if isinstance(t, str) and t.strip()))
    if not passages:
        raise OODError(f"{path}: holds no passage")
    return passages[:limit] if limit > 0 else passages


def encode_windows(tokenizer, passages: list[str], *, max_tokens: int) -> list[list[int]]:
    """Each passage's first `max_tokens` token ids (no special tokens); passages under 2 tokens are dropped.

    A fixed window per passage keeps the measurement comparable between models and across steps.
    """
    if max_tokens < 2:
        raise ValueError(f"max_tokens must be >= 2 (one token predicts the next), got {max_tokens}")
    ids = tokenizer(passages, add_special_tokens=False)["input_ids"]
    windows = [list(x[:max_tokens]) for x in ids if len(x) >= 2]
    if not windows:
        raise OODError("no OOD passage has 2 or more tokens")
    return windows


def pad_windows(windows: list[list[int]], *, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask; position t predicts token t + 1.

    Shape:
        returns ids [B, T], mask [B, T] (T = longest window)
    """
    width = max(len(w) for w in windows)
    ids = torch.full((len(windows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(windows), width), dtype=torch.long)
    for i, w in enumerate(windows):
        ids[i, : len(w)] = torch.tensor(w, dtype=torch.long)
        mask[i, : len(w)] = 1
    return ids, mask


@torch.no_grad()
def drift_per_token(adapted: LogitsFn, base: LogitsFn, windows: list[list[int]], *, pad_id: int,
                    batch_size: int = 8, device: torch.device | str = "cpu",
                    progress: Callable | None = None) -> dict[str, np.ndarray]:
    """Per-token NLL under both models and KL(base || adapted) over every predicted token of `windows`.

    Args:
        adapted, base: ``fn(input_ids, attention_mask) -> logits [B, T, V]`` of each model.
        windows: Token ids per passage (`encode_windows`).
        pad_id: Padding id (never a target: masked out).
        batch_size: Windows per forward pass.
        device: Where the ids go.
        progress: Optional wrapper of the batch iterator (e.g. tqdm).

    Returns:
        `semgrpo.eval.metrics.token_nll_kl`'s dict: ``nll_base``, ``nll_adapted``, ``kl``, ``delta_nll``,
        float64 arrays over all predicted tokens, passage by passage.
    """
    starts = range(0, len(windows), batch_size)
    parts = []
    for s in progress(starts) if progress else starts:
        ids, mask = pad_windows(windows[s:s + batch_size], pad_id=pad_id)
        ids, mask = ids.to(device), mask.to(device)
        logits_a, logits_b = adapted(ids, mask), base(ids, mask)
        parts.append(token_nll_kl(logits_b[:, :-1], logits_a[:, :-1], ids[:, 1:], mask[:, 1:]))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
