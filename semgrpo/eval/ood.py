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

__all__ = ["OODError", "load_passages", "encode_windows", "pad_windows", "drift_per_token", "drift_of_models",
           "script_token_mask"]

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
    return drift_of_models({"adapted": adapted}, base, windows, pad_id=pad_id, batch_size=batch_size, device=device,
                           progress=progress)["adapted"]


@torch.no_grad()
def drift_of_models(models: dict[str, LogitsFn], base: LogitsFn, windows: list[list[int]], *, pad_id: int,
                    batch_size: int = 8, device: torch.device | str = "cpu", script_mask: torch.Tensor | None = None,
                    progress: Callable | None = None) -> dict[str, dict[str, np.ndarray]]:
    """`drift_per_token` for several models at once: the base's logits of each batch of windows are computed
    once and compared with every model's, instead of once per model.

    With `script_mask` ([V] bool: the tokens of the language being taught) each model's NLL is also split in
    two, to tell forgetting from a moved script prior: ``script_shift = -log(1 - p(script tokens))``, the
    probability mass taken by the taught script, and ``nll_renormalised = nll - script_shift``, the NLL under the
    model's distribution renormalised over the other tokens; the same for the base (``..._base``).

    Returns:
        ``{name: {"nll_base", "nll_adapted", "kl", "delta_nll"[, "script_shift", "script_shift_base",
        "nll_renormalised", "nll_renormalised_base"]}}``, float64 arrays over all predicted tokens.
    """
    starts = range(0, len(windows), batch_size)
    parts: dict[str, list[dict]] = {name: [] for name in models}
    for s in progress(starts) if progress else starts:
        ids, mask = pad_windows(windows[s:s + batch_size], pad_id=pad_id)
        ids, mask = ids.to(device), mask.to(device)
        logits_b = base(ids, mask)[:, :-1]
        targets, on = ids[:, 1:], mask[:, 1:]
        shift_b = None if script_mask is None else _script_shift(logits_b, on, script_mask)
        for name, fn in models.items():
            logits_a = fn(ids, mask)[:, :-1]
            stats = token_nll_kl(logits_b, logits_a, targets, on)
            if shift_b is not None:
                shift_a = _script_shift(logits_a, on, script_mask)
                stats.update(script_shift=shift_a, script_shift_base=shift_b,
                             nll_renormalised=stats["nll_adapted"] - shift_a,
                             nll_renormalised_base=stats["nll_base"] - shift_b)
            parts[name].append(stats)
    return {name: {k: np.concatenate([p[k] for p in ps]) for k in ps[0]} for name, ps in parts.items()}


def _script_shift(logits: torch.Tensor, mask: torch.Tensor, script_mask: torch.Tensor) -> np.ndarray:
    """-log(1 - p(script tokens)) at every masked position (float64; inf if the script takes all the mass)."""
    rows = logits[mask.bool()].float()
    logp = torch.log_softmax(rows, dim=-1)
    log_mass = torch.logsumexp(logp[:, script_mask.to(rows.device)], dim=-1)
    return (-torch.log1p(-log_mass.double().exp().clamp(max=1.0))).cpu().numpy()


def script_token_mask(tokenizer, script: str) -> torch.Tensor:
    """[V] bool: the tokens whose text holds at least one letter of `script` (semgrpo.script's rule)."""
    from semgrpo.script import script_consistent

    texts = [tokenizer.decode([i]) for i in range(len(tokenizer))]
    # consistent with any share of the script and any number of foreign letters = holds one letter of it
    return torch.as_tensor(script_consistent(texts, script=script, min_ratio=1e-9, max_foreign=10**9), dtype=torch.bool)
