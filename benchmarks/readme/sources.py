"""Reading the committed files the README's figures come from, with one clear error for what is missing."""
from __future__ import annotations

import csv
import functools
import json
from pathlib import Path

from readme.markers import FigureError

REPO = Path(__file__).resolve().parents[2]
RESULTS = "benchmarks/results"


def _path(rel: str) -> Path:
    path = REPO / rel
    if not path.is_file():
        raise FigureError(f"{rel} is missing: the figures read from it cannot be rendered")
    return path


@functools.cache
def load_json(rel: str):
    return json.loads(_path(rel).read_text(encoding="utf-8"))


@functools.cache
def load_jsonl(rel: str) -> tuple[dict, ...]:
    return tuple(json.loads(line) for line in _path(rel).read_text(encoding="utf-8").splitlines() if line.strip())


@functools.cache
def csv_rows(rel: str) -> tuple[dict, ...]:
    with _path(rel).open(newline="", encoding="utf-8") as f:
        return tuple(csv.DictReader(f))


def get(tree, rel: str, *keys):
    """tree[k1][k2]...; a FigureError naming the file and the key path when a level is missing."""
    node = tree
    for i, key in enumerate(keys):
        if not isinstance(node, dict) or key not in node or node[key] is None:
            raise FigureError(f"{rel} has no {'.'.join(map(str, keys[:i + 1]))}")
        node = node[key]
    return node


def p50(rel: str, **match: str) -> float:
    """The p50 of the one row of a benchmark CSV whose columns equal `match` (shape: a substring)."""
    shape = match.pop("shape", None)
    rows = [r for r in csv_rows(rel) if all(r[k] == v for k, v in match.items())
            and (shape is None or shape in r["shape"])]
    if len(rows) != 1:
        raise FigureError(f"{rel}: {len(rows)} rows match {dict(match, shape=shape)}, expected one")
    return float(rows[0]["p50"])


def column(rel: str, name: str) -> set[str]:
    """The distinct values of a CSV column (a benchmark's device, git sha, timestamps)."""
    return {r[name] for r in csv_rows(rel)}


def clear_caches() -> None:
    """Forget what was read (a test that plants a changed file renders again)."""
    for fn in (load_json, load_jsonl, csv_rows):
        fn.cache_clear()


def path_text(rel: str) -> str:
    return _path(rel).read_text(encoding="utf-8")
