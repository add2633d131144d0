"""Data hygiene: which pair and which passage goes where, decided once, written down, and checked.

The OpenPecha pairs repeat liturgical lines across texts (and across v1's train/dev split), often with another
punctuation mark or spacing. So:
- every line is compared in a normalised form (NFC, without spaces, punctuation and Tibetan tsheg/shad marks);
- pairs that share a normalised Tibetan *or* Chinese side form one cluster, and a cluster goes to one split
  whole, so no held-out line has a near twin in training;
- within a split, pairs are de-duplicated by their normalised form;
- the held-out sets are drawn from the clusters in a seeded order: `test` (the verdict) and `select` (every
  choice) first, the rest trains;
- the OOD passages (held-out DRCD articles, CMRC 2018 dev contexts) are split into `ood_select` and `ood_test`.

`check_hygiene` then proves, from the written files, that no select or test line and no OOD passage occurs in
anything a model or an encoder trained on, in tau's measurement or in pretraining.
"""
from __future__ import annotations

import json
import random
import unicodedata
from dataclasses import dataclass
from pathlib import Path

_TIBETAN_MARKS = {chr(c) for c in range(0x0F01, 0x0F18)} | {"\u0f34", "\u0f3a", "\u0f3b", "\u0f3c", "\u0f3d"}


class HygieneError(ValueError):
    """A held-out line or passage leaked into training data, or a split is too small."""


def normalise(text: str) -> str:
    """The form lines are compared in: NFC without whitespace, punctuation or Tibetan marks (tsheg, shad, ...)."""
    return "".join(ch for ch in unicodedata.normalize("NFC", text)
                   if not (ch.isspace() or unicodedata.category(ch)[0] in "PZC" or ch in _TIBETAN_MARKS))


@dataclass(frozen=True)
class PairSplits:
    train: list[dict]
    select: list[dict]
    test: list[dict]
    clusters: int
    pairs_read: int


def split_pairs(pairs: list[dict], *, select: int, test: int, seed: int) -> PairSplits:
    """Cluster `pairs` ({"id", "bo", "zh"}) by shared normalised sides, then draw `test`, `select`, train.

    Raises:
        HygieneError: Fewer clusters than the held-out sets need.
    """
    parent = list(range(len(pairs)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_seen: dict[tuple[str, str], int] = {}
    for i, p in enumerate(pairs):
        for side in ("bo", "zh"):
            key = (side, normalise(p[side]))
            if key in first_seen:
                parent[find(i)] = find(first_seen[key])
            else:
                first_seen[key] = i
    clusters: dict[int, list[dict]] = {}
    for i, p in enumerate(pairs):
        clusters.setdefault(find(i), []).append(p)
    # A stable order that does not depend on the input's order: by each cluster's smallest normalised key.
    ordered = sorted(clusters.values(), key=lambda c: min(normalise(p["bo"]) + "\0" + normalise(p["zh"]) for p in c))
    random.Random(seed).shuffle(ordered)
    held: dict[str, list[dict]] = {"test": [], "select": []}
    train: list[dict] = []
    for cluster in ordered:
        unique = _unique(cluster)
        for name, size in (("test", test), ("select", select)):
            if len(held[name]) < size:
                held[name] += unique
                break
        else:
            train += unique
    if len(held["test"]) < test or len(held["select"]) < select:
        raise HygieneError(f"{len(pairs)} pairs form {len(clusters)} clusters: too few for {test} test and "
                           f"{select} select pairs")
    return PairSplits(train=train, select=held["select"], test=held["test"], clusters=len(clusters),
                      pairs_read=len(pairs))


def _unique(pairs: list[dict]) -> list[dict]:
    """The first pair of each normalised (bo, zh) form, in order."""
    seen, out = set(), []
    for p in pairs:
        key = (normalise(p["bo"]), normalise(p["zh"]))
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def split_passages(passages: list[str], *, select: int, test: int, seed: int) -> tuple[list[str], list[str]]:
    """`select` and `test` OOD passages drawn in a seeded order (whatever is left over is not used)."""
    if len(passages) < select + test:
        raise HygieneError(f"{len(passages)} OOD passages: too few for {select} select and {test} test")
    order = list(passages)
    random.Random(seed).shuffle(order)
    return order[:select], order[select:select + test]


def without_lines(texts: list[str], banned: set[str]) -> tuple[list[str], int]:
    """`texts` with every line whose normalised form is in `banned` removed; and how many lines went."""
    out, dropped = [], 0
    for text in texts:
        kept = []
        for line in text.split("\n"):
            if normalise(line) in banned:
                dropped += 1
            else:
                kept.append(line)
        if any(k.strip() for k in kept):
            out.append("\n".join(kept))
    return out, dropped


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def check_hygiene(data_dir: Path, *, pretraining: list[str]) -> dict:
    """Every held-out line and passage is absent from every training file and from the pretraining text.

    `data_dir` holds `select.jsonl`, `test.jsonl`, `ood_select.jsonl`, `ood_test.jsonl` and one JSONL per training
    stage (every other `*.jsonl`: pairs {"bo", "zh"} or texts {"text"}). Returns the counts checked.

    Raises:
        HygieneError: naming the file and the first leaked line.
    """
    held = {name: read_jsonl(data_dir / f"{name}.jsonl") for name in ("select", "test")}
    lines = {normalise(p[side]): name for name, ps in held.items() for p in ps for side in ("bo", "zh")}
    ood = {name: [r["text"] for r in read_jsonl(data_dir / f"{name}.jsonl")] for name in ("ood_select", "ood_test")}
    training = sorted(p for p in data_dir.glob("*.jsonl") if p.stem not in {*held, *ood})
    for path in training:
        for n, record in enumerate(read_jsonl(path), 1):
            for field in ("bo", "zh", "text"):
                for line in str(record.get(field, "")).split("\n"):
                    if normalise(line) in lines:
                        raise HygieneError(f"{path.name}:{n}: a {lines[normalise(line)]} line is in training data: "
                                           f"{line[:60]!r}")
    for text in pretraining:
        for line in text.split("\n"):
            if normalise(line) in lines:
                raise HygieneError(f"pretraining text holds a {lines[normalise(line)]} line: {line[:60]!r}")
    corpus = "\n".join(pretraining) + "\n" + "\n".join(
        str(r.get(f, "")) for path in training for r in read_jsonl(path) for f in ("bo", "zh", "text"))
    for name, passages in ood.items():
        for passage in passages:
            if passage in corpus:
                raise HygieneError(f"an {name} passage occurs in training or pretraining text: {passage[:60]!r}")
    return {"held_out_lines": len(lines), "training_files": [p.name for p in training],
            "ood_passages": sum(map(len, ood.values()))}
