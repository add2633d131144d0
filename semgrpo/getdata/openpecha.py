"""The OpenPecha files of the data root, built from the corpus's line-aligned texts.

OpenPecha-Data/C0A2DD042 holds each Lotsawa House text as `text-pairs/<id>-bo.txt` (Tibetan) and, for some,
`text-pairs/<id>-zh.txt` (Chinese), line n of one aligned with line n of the other. From them:

- `bo_zh_openpecha/*.jsonl`: a pair is line n (0-based, counting every line, blank ones too) of both files,
  each stripped, kept when both are non-empty: `{"id": "<id>:<n>", "bo", "zh"}`.
- `bo_title_openpecha/*.jsonl`: from the Tibetan file's non-empty stripped lines, when there are at least 3:
  the first is the title, the rest joined by newlines is the text; kept when the text has at most 2,000
  characters and the title at most 300: `{"id": "<id>", "text", "title"}`.

Lines are those of Python's `str.splitlines`: besides `\\n` and `\\r\\n` it also breaks at the separators
U+001C-U+001E, U+0085, U+2028 and U+2029. Two Tibetan texts (A9AFE97AB, A224998DD) hold U+001D, and the
published title files were built with this rule. Which texts go to which split, in which order, is the
committed list in `openpecha_ids.json`. JSON lines keep non-ASCII characters as they are.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable

TITLE_MIN_LINES = 3
TEXT_MAX_CHARS = 2000
TITLE_MAX_CHARS = 300


def bo_path(text_id: str) -> str:
    return f"text-pairs/{text_id}-bo.txt"


def zh_path(text_id: str) -> str:
    return f"text-pairs/{text_id}-zh.txt"


def source_paths(build: str, ids: Iterable[str]) -> list[str]:
    """The corpus files a build reads, in order."""
    if build == "pairs":
        return [p for i in ids for p in (bo_path(i), zh_path(i))]
    if build == "titles":
        return [bo_path(i) for i in ids]
    raise ValueError(f"unknown OpenPecha build {build!r} (expected pairs or titles)")


def pairs(text_id: str, bo_text: str, zh_text: str) -> list[dict[str, str]]:
    """The aligned pairs of one text (see the module docstring)."""
    rows = []
    for n, (bo, zh) in enumerate(zip(bo_text.splitlines(), zh_text.splitlines())):
        bo, zh = bo.strip(), zh.strip()
        if bo and zh:
            rows.append({"id": f"{text_id}:{n}", "bo": bo, "zh": zh})
    return rows


def title_example(text_id: str, bo_text: str) -> dict[str, str] | None:
    """The title example of one Tibetan text, or None when the rules leave it out."""
    lines = [line.strip() for line in bo_text.splitlines()]
    lines = [line for line in lines if line]
    if len(lines) < TITLE_MIN_LINES:
        return None
    title, text = lines[0], "\n".join(lines[1:])
    if len(text) > TEXT_MAX_CHARS or len(title) > TITLE_MAX_CHARS:
        return None
    return {"id": text_id, "text": text, "title": title}


def build(kind: str, ids: Iterable[str], read: Callable[[str], str]) -> bytes:
    """The JSON-lines file of `kind` ("pairs" or "titles") over the texts `ids`, in their order.

    Args:
        read: The text of a corpus file, by its path in the repository (`text-pairs/<id>-bo.txt`).
    """
    rows: list[dict[str, str]] = []
    for text_id in ids:
        if kind == "pairs":
            rows += pairs(text_id, read(bo_path(text_id)), read(zh_path(text_id)))
        elif kind == "titles":
            example = title_example(text_id, read(bo_path(text_id)))
            rows += [example] if example else []
        else:
            raise ValueError(f"unknown OpenPecha build {kind!r} (expected pairs or titles)")
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
