"""Minimal OpenPecha source texts rebuilt from the published pair and title files, for the download tests.

The repository must not depend on the real corpus (4,600 files), so the tests serve texts reconstructed by
inverting the rules from the JSONL files of the data root. Why that is a faithful check of the builder:
- every reconstructed text agrees with *both* files at once: its Tibetan lines hold the pairs at their line
  numbers and, read in order, the title and the text of the title file;
- they are written independently of `semgrpo.getdata.openpecha` and carry what the rules must discard:
  lines padded with whitespace, blank and whitespace-only lines, Tibetan lines whose Chinese line is empty,
  CRLF line ends and a U+001D line separator, and trailing lines beyond the other language's end;
- the builder's output must then match the published files byte for byte (their committed sha256), which
  fails on any change of line numbering, stripping, filtering, order or JSON formatting.
That the real texts at the pinned commit give the same bytes was checked once against the real corpus
(see the README's Data section); this keeps that check runnable offline.
"""
from __future__ import annotations

import json
from pathlib import Path

from semgrpo.getdata import openpecha


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _align(lines: list[str], pairs: list[tuple[int, str]]) -> list[int]:
    """For each pair (line number, Tibetan), the index in `lines` (the title file's lines) it sits at, such that
    the lines before it fit in the line numbers before it. Depth-first with memo; raises when impossible."""
    memo: dict[tuple[int, int], list[int] | None] = {}

    def solve(j: int, start: int) -> list[int] | None:  # place pairs[j:] at indices >= start
        if j == len(pairs):
            return []
        if (j, start) not in memo:
            memo[(j, start)] = None
            prev_n = pairs[j - 1][0] if j else -1
            n, bo = pairs[j]
            for k in range(start, len(lines)):
                if k - start > n - prev_n - 1:  # too many unpaired lines for the gap
                    break
                if lines[k] == bo:
                    rest = solve(j + 1, k + 1)
                    if rest is not None:
                        memo[(j, start)] = [k, *rest]
                        break
        return memo[(j, start)]

    found = solve(0, 0)
    if found is None:
        raise ValueError("the pairs and the title of a text do not fit one source text")
    return found


def source_texts(root: Path) -> dict[str, str]:
    """`text-pairs/<id>-bo.txt` / `-zh.txt` -> text, for every text the data root's OpenPecha files name."""
    pairs: dict[str, list[tuple[int, str, str]]] = {}
    for split in ("train", "dev"):
        for row in _jsonl(root / "bo_zh_openpecha" / f"{split}.jsonl"):
            text_id, n = row["id"].rsplit(":", 1)
            pairs.setdefault(text_id, []).append((int(n), row["bo"], row["zh"]))
    titles = {row["id"]: [row["title"], *row["text"].split("\n")]
              for split in ("train", "dev") for row in _jsonl(root / "bo_title_openpecha" / f"{split}.jsonl")}
    out = {}
    for number, text_id in enumerate(dict.fromkeys([*pairs, *titles])):
        rows = sorted(pairs.get(text_id, []))
        bo, zh = _lines(rows, titles.get(text_id))
        bo, zh = _noisy(bo, number), _noisy(zh, number + 1)
        end = "\r\n" if number % 5 == 0 else "\n"
        out[openpecha.bo_path(text_id)] = end.join(bo) + end
        if rows:
            out[openpecha.zh_path(text_id)] = end.join(zh) + end + ("\u3000\n" if number % 2 else "")
    return out


def _noisy(lines: list[str], number: int) -> list[str]:
    """`lines` with what the rules must discard: padding (ASCII and ideographic spaces), whitespace-only lines,
    and in a third of the texts two lines separated by U+001D instead of a line end (two lines to
    `str.splitlines`; numbering by "\\n" alone would merge them and shift every later pair)."""
    out = [f" {line}\t" if line and i % 3 == number % 3 else f"\u3000{line}" if line and i % 4 == 1 else line or "  "
           for i, line in enumerate(lines)]
    if number % 3 == 0 and len(out) >= 2:
        i = len(out) // 2 - 1
        out[i:i + 2] = [f"{out[i]}\x1d{out[i + 1]}"]
    return out


def _lines(rows: list[tuple[int, str, str]], title_lines: list[str] | None) -> tuple[list[str], list[str]]:
    """Tibetan and Chinese lines of one text: the pairs at their line numbers, the title file's other lines in the
    gaps with an empty Chinese line, blank lines elsewhere."""
    size = rows[-1][0] + 1 if rows else 0
    bo, zh = [""] * size, [""] * size
    for n, b, z in rows:
        bo[n], zh[n] = b, z
    if title_lines is None:
        return bo, zh
    at = _align(title_lines, [(n, b) for n, b, _ in rows])
    placed = dict(zip(at, (n for n, _, _ in rows)))
    line = -1
    for k, text in enumerate(title_lines):
        if k in placed:
            line = placed[k]
            continue
        line += 1
        while line < size and bo[line]:  # the next free line (a pair's line is taken)
            line += 1
        if line >= size:
            bo.append(text)
            size += 1
        else:
            bo[line] = text
    return bo, zh
