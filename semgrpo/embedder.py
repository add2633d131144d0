"""Reward encoder: bilingual contrastive adaptation (paper section 3.4) and its graded diagnostic.

``train_embedder`` takes a sentence-transformers model (directory or object) or a plain HF encoder
directory (mean pooling + normalisation added), trains it on parallel pairs with a symmetric InfoNCE loss
over in-batch negatives in plain torch, and saves a directory that ``SentenceTransformer(path)`` loads
offline. ``graded_diagnostic`` checks the property a reward needs: true > partly matching > unrelated.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import regex
import torch
import torch.nn.functional as F

from semgrpo.data import iter_json_lines
from semgrpo.data_root import resolve_data_path
from semgrpo.errors import UserError

# One unit of meaning for the partial-match diagnostic: a Tibetan syllable with its tsheg, one Han
# character, or a whitespace-separated word of any other script.
_UNIT = regex.compile(r"(?V1)[[\p{Tibetan}]&&[\p{L}\p{M}]]+[\u0f0b\u0f0c]?|\p{Han}|[^\s\p{Han}\p{Tibetan}]+|\S")


class EmbedderInputError(UserError):
    """A user error in the inputs of the embedder (bad path, record or option)."""


def read_pairs_jsonl(path: str | Path, *, fields: Sequence[str]) -> list[dict]:
    """Read JSONL records that each hold non-empty string ``fields`` from a path or a ``data:`` path.

    Raises:
        EmbedderInputError: Missing file, or a record that is not an object or lacks a field.
        DataError: A line that is not valid UTF-8 or JSON (both name ``file:line``).
    """
    path = resolve_data_path(path)
    if not path.is_file():
        raise EmbedderInputError(f"{path}: no such file")
    records = []
    for where, rec in iter_json_lines(path, str(path)):  # bad UTF-8 or JSON: a DataError naming file:line
        if not isinstance(rec, dict):
            raise EmbedderInputError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        for field in fields:
            value = rec.get(field)
            if not isinstance(value, str) or not value.strip():
                raise EmbedderInputError(f"{where}: field {field!r} must be a non-empty string, got {value!r}")
        records.append(rec)
    if not records:
        raise EmbedderInputError(f"{path}: no records")
    return records


def load_encoder(model_path_or_st, *, device: str | None = None):
    """Load a sentence-transformers directory, or a plain HF encoder directory with mean pooling added.

    A ``SentenceTransformer`` object is returned as is.
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    if isinstance(model_path_or_st, SentenceTransformer):
        return model_path_or_st
    path = Path(model_path_or_st)
    if not path.is_dir():
        raise EmbedderInputError(f"{path}: not a model directory")
    try:
        if (path / "modules.json").is_file():
            return SentenceTransformer(str(path), device=device, local_files_only=True)
        transformer = Transformer(str(path))
        dim = transformer.get_embedding_dimension()
        return SentenceTransformer(modules=[transformer, Pooling(dim, "mean"), Normalize()], device=device)
    except (OSError, ValueError, KeyError) as e:
        raise EmbedderInputError(f"{path}: cannot load an encoder ({e})") from None


def _embed(model, texts: list[str]) -> torch.Tensor:
    """Unit-norm sentence embeddings with grad. Shape: [len(texts), D]."""
    features = model.preprocess(texts)
    features = {k: v.to(model.device) if torch.is_tensor(v) else v for k, v in features.items()}
    return F.normalize(model(features)["sentence_embedding"].float(), dim=-1)


def contrastive_loss(src_emb: torch.Tensor, tgt_emb: torch.Tensor, *, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE with in-batch negatives: row i of src matches row i of tgt.

    Args:
        src_emb: Unit-norm source embeddings.
        tgt_emb: Unit-norm target embeddings.
        temperature: Softmax temperature of the cosine logits.

    Shape:
        src_emb, tgt_emb: [B, D]. Returns a scalar.
    """
    if src_emb.shape != tgt_emb.shape or src_emb.dim() != 2:
        raise ValueError(
            f"expected two [B, D] tensors of one shape, got {tuple(src_emb.shape)} and {tuple(tgt_emb.shape)}"
        )
    logits = src_emb @ tgt_emb.T / temperature
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def partial_match(text: str, other: str) -> str:
    """``text`` with about half of its units (Tibetan syllables, Han characters, words) taken from ``other``.

    Every other unit, starting with the second, is replaced by ``other``'s unit at that position (cycling);
    a one-unit text gets ``other``'s first unit appended, so half of the result is foreign either way.
    """
    units = _UNIT.findall(text)
    foreign = _UNIT.findall(other) or [other]
    if len(units) <= 1:
        return text + foreign[0]
    out = list(units)
    for i in range(1, len(units), 2):
        out[i] = foreign[i % len(foreign)]
    sep = "" if any(regex.search(r"[\p{Tibetan}\p{Han}]", u) for u in units) else " "
    return sep.join(out)


@torch.no_grad()
def graded_diagnostic(
    model,
    pairs: Sequence[dict],
    *,
    src_field: str,
    tgt_field: str,
    mono_field: str | None = None,
    seed: int = 0,
    max_pairs: int = 256,
    batch_size: int = 64,
) -> dict[str, float]:
    """Mean cosine of true vs partly-matching vs unrelated pairs.

    Cross-lingual (``src`` vs ``tgt``): true = ``cos(src_i, tgt_i)``; partial = ``cos(src_i,
    partial_match(tgt_i, tgt_j))``; unrelated = ``cos(src_i, tgt_j)``, with j a random other pair.
    Monolingual (``mono_field``, e.g. a Tibetan completion vs the Tibetan reference): partial =
    ``cos(m_i, partial_match(m_i, m_j))``, unrelated = ``cos(m_i, m_j)`` (true is 1 by construction).

    Returns:
        ``cross_true``, ``cross_partial``, ``cross_unrelated``, ``cross_graded`` (1.0 when true > partial >
        unrelated else 0.0), and with ``mono_field`` also ``mono_partial``, ``mono_unrelated``, ``mono_graded``.
    """
    if len(pairs) < 2:
        raise EmbedderInputError(f"graded_diagnostic needs at least 2 pairs, got {len(pairs)}")
    rng = random.Random(seed)
    idx = list(range(len(pairs)))
    if len(idx) > max_pairs:
        idx = sorted(rng.sample(idx, max_pairs))
    others = [(i + rng.randrange(1, len(pairs))) % len(pairs) for i in idx]  # never i itself

    def enc(texts):
        return model.encode(
            texts, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False
        ).float()

    def cos(a, b):
        return float((enc(a) * enc(b)).sum(-1).mean())

    was_training = model.training
    model.eval()
    src = [pairs[i][src_field] for i in idx]
    tgt = [pairs[i][tgt_field] for i in idx]
    tgt_other = [pairs[j][tgt_field] for j in others]
    out = {
        "cross_true": cos(src, tgt),
        "cross_partial": cos(src, [partial_match(t, o) for t, o in zip(tgt, tgt_other)]),
        "cross_unrelated": cos(src, tgt_other),
    }
    out["cross_graded"] = float(out["cross_true"] > out["cross_partial"] > out["cross_unrelated"])
    if mono_field is not None:
        mono = [pairs[i][mono_field] for i in idx]
        mono_other = [pairs[j][mono_field] for j in others]
        out["mono_partial"] = cos(mono, [partial_match(t, o) for t, o in zip(mono, mono_other)])
        out["mono_unrelated"] = cos(mono, mono_other)
        out["mono_graded"] = float(1.0 > out["mono_partial"] > out["mono_unrelated"])
    model.train(was_training)
    return out


def _check_pairs(pairs: Sequence[dict], fields: Sequence[str]) -> None:
    if not isinstance(pairs, Sequence) or len(pairs) < 2:
        size = len(pairs) if hasattr(pairs, "__len__") else "?"
        raise EmbedderInputError(f"need a list of at least 2 pair records, got {type(pairs).__name__} of {size}")
    for n, rec in enumerate(pairs):
        for field in fields:
            value = rec.get(field) if isinstance(rec, dict) else None
            if not isinstance(value, str) or not value.strip():
                raise EmbedderInputError(f"pair {n}: field {field!r} must be a non-empty string, got {value!r}")


def train_embedder(
    model_path_or_st,
    pairs: Sequence[dict],
    *,
    src_field: str,
    tgt_field: str,
    output_dir: str | Path,
    epochs: int,
    batch_size: int,
    lr: float,
    temperature: float = 0.05,
    seed: int = 0,
    max_length: int = 64,
    eval_pairs: Sequence[dict] | None = None,
    mono_field: str | None = None,
    device: str | None = None,
    num_threads: int | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Adapt a sentence encoder on parallel pairs with a symmetric bilingual InfoNCE loss and save it.

    Args:
        model_path_or_st: ``SentenceTransformer``, its directory, or a plain HF encoder directory.
        pairs: Records holding ``src_field`` and ``tgt_field`` strings (translations of each other).
        src_field: Source-language field, e.g. ``"bo"``.
        tgt_field: Target-language field, e.g. ``"zh"``.
        output_dir: Where the sentence-transformers directory is saved.
        epochs: Passes over ``pairs``.
        batch_size: Pairs per step; the other pairs of a batch are the negatives.
        lr: AdamW learning rate (linear warmup over the first 10% of steps, then constant).
        temperature: InfoNCE temperature.
        seed: Seed of the shuffling (and of dropout).
        max_length: Token cap per text.
        eval_pairs: Pairs of the graded diagnostic (default: ``pairs``).
        mono_field: Field of the monolingual diagnostic (e.g. ``"bo"``), or None.
        device: Torch device; default CUDA when available.
        num_threads: CPU threads for torch during the call (restored after); None leaves torch's setting.
            Tiny encoders on a busy 2-core machine run far faster with 1 than with contended threads.
        log: Progress sink.

    Returns:
        ``{"before": diag, "after": diag, "losses": [mean loss per epoch], "steps": int, "seconds": float}``.
    """
    _check_pairs(pairs, (src_field, tgt_field))
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("max_length", max_length)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise EmbedderInputError(f"{name} must be a positive int, got {value!r}")
    if batch_size < 2:
        raise EmbedderInputError(f"batch_size must be >= 2 for in-batch negatives, got {batch_size}")
    if not lr > 0 or not temperature > 0:
        raise EmbedderInputError(f"lr and temperature must be > 0, got lr={lr!r}, temperature={temperature!r}")

    if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 1):
        raise EmbedderInputError(f"num_threads must be a positive int or None, got {num_threads!r}")
    saved_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        return _train(
            model_path_or_st, pairs, src_field=src_field, tgt_field=tgt_field, output_dir=output_dir,
            epochs=epochs, batch_size=batch_size, lr=lr, temperature=temperature, seed=seed,
            max_length=max_length, eval_pairs=eval_pairs, mono_field=mono_field, device=device, log=log,
        )
    finally:
        torch.set_num_threads(saved_threads)


def _train(
    model_path_or_st, pairs, *, src_field, tgt_field, output_dir, epochs, batch_size, lr, temperature, seed,
    max_length, eval_pairs, mono_field, device, log,
) -> dict:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_encoder(model_path_or_st, device=device)
    model.to(device)
    model.max_seq_length = max_length
    eval_set = list(eval_pairs) if eval_pairs is not None else list(pairs)
    diag_kw = dict(src_field=src_field, tgt_field=tgt_field, mono_field=mono_field, seed=seed)
    before = graded_diagnostic(model, eval_set, **diag_kw)
    log(f"embedder: before {_fmt(before)}")

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = max(1, len(pairs) // batch_size)  # drop the short last batch: fewer negatives
    total = steps_per_epoch * epochs
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, total // 10)))
    model.train()
    start, losses, step = time.perf_counter(), [], 0
    for epoch in range(epochs):
        order = torch.randperm(len(pairs), generator=gen).tolist()
        epoch_loss = 0.0
        for b in range(steps_per_epoch):
            batch = [pairs[i] for i in order[b * batch_size : (b + 1) * batch_size]]
            if len(batch) < 2:
                break
            src = _embed(model, [r[src_field] for r in batch])
            tgt = _embed(model, [r[tgt_field] for r in batch])
            loss = contrastive_loss(src, tgt, temperature=temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            epoch_loss += float(loss.detach())
            step += 1
        losses.append(epoch_loss / steps_per_epoch)
        if epoch == 0 or (epoch + 1) % max(1, epochs // 5) == 0 or epoch + 1 == epochs:
            log(f"embedder: epoch {epoch + 1}/{epochs} loss {losses[-1]:.4f}")
    seconds = time.perf_counter() - start
    model.eval()
    after = graded_diagnostic(model, eval_set, **diag_kw)
    log(f"embedder: after {_fmt(after)} ({step} steps, {seconds:.1f}s)")
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    model.save(str(output_dir), create_model_card=False)
    return {"before": before, "after": after, "losses": losses, "steps": step, "seconds": seconds}


def _fmt(diag: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.3f}" for k, v in diag.items())
