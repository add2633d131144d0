"""The real text of the reproduction: the MT pairs, what the base is pretrained on, what measures its drift.

Every input comes from the data root (`bin/get_data.py`):

- the MT pairs: `bo_zh_openpecha` train and dev together (split again by `splits.split_pairs`);
- pretraining: DRCD paragraphs (Traditional Chinese Wikipedia) except a held-out slice of articles, the CMRC
  2018 *trial* contexts, and the Tibetan texts of `bo_title_openpecha` (train and dev) with every held-out MT
  line taken out: a multilingual base has seen the language, never the lines it is tested on;
- OOD candidates (the alignment-tax passages): the held-out DRCD articles' paragraphs and the CMRC 2018 *dev*
  contexts, none of them in pretraining.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from reproduce.splits import without_lines

from semgrpo.data_root import GET_DATA, data_root

# (folder, file) of every input, so a missing one is named before anything runs.
FILES = {
    "drcd": ("drcd", "dev.json"),
    "cmrc_trial": ("cmrc2018", "trial.json"),
    "cmrc_dev": ("cmrc2018", "dev.json"),
    "tibetan_train": ("bo_title_openpecha", "train.jsonl"),
    "tibetan_dev": ("bo_title_openpecha", "dev.jsonl"),
    "mt_train": ("bo_zh_openpecha", "train.jsonl"),
    "mt_dev": ("bo_zh_openpecha", "dev.jsonl"),
}


class CorpusError(ValueError):
    """A data file is missing or not what the reproduction expects."""


@dataclass(frozen=True)
class Corpus:
    """Pretraining text and OOD candidates, in a fixed order."""

    chinese: list[str]
    tibetan: list[str]
    ood: list[str]
    heldout_articles: int
    tibetan_lines_removed: int

    @property
    def pretraining(self) -> list[str]:
        return self.chinese + self.tibetan


def data_paths(data_dir: str | Path) -> dict[str, Path]:
    """The input files under `data_dir`; a missing one is a `CorpusError` naming it and the fetch command."""
    data_dir = Path(data_dir)
    paths = {key: data_dir / folder / name for key, (folder, name) in FILES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        fetch = GET_DATA if data_dir == data_root() else f"{GET_DATA} --root {data_dir}"
        raise CorpusError(f"missing data file(s): {', '.join(missing)}; fetch them with: {fetch}")
    return paths


def mt_pairs(paths: dict[str, Path]) -> list[dict]:
    """Every MT pair, train then dev, as read ({"id", "bo", "zh"})."""
    out = []
    for key in ("mt_train", "mt_dev"):
        for n, record in enumerate(_jsonl(paths[key]), 1):
            if not all(isinstance(record.get(f), str) and record[f].strip() for f in ("bo", "zh")):
                raise CorpusError(f"{paths[key]}:{n}: expected non-empty 'bo' and 'zh' strings")
            out.append({"id": str(record.get("id", f"{key}:{n}")), "bo": record["bo"].strip(),
                        "zh": record["zh"].strip()})
    return out


def _jsonl(path: Path) -> list[dict]:
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise CorpusError(f"{path}:{n}: not valid JSON") from None
            if not isinstance(record, dict):
                raise CorpusError(f"{path}:{n}: expected a JSON object")
            out.append(record)
    return out


def _squad_articles(path: Path) -> list[list[str]]:
    """Paragraph contexts per article of a SQuAD-layout JSON file (DRCD, CMRC 2018)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [[p["context"].strip() for p in article["paragraphs"]] for article in data["data"]]
    except json.JSONDecodeError as exc:
        raise CorpusError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except (KeyError, TypeError):
        raise CorpusError(f"{path}: expected SQuAD-layout JSON with data[].paragraphs[].context") from None


def load_corpus(paths: dict[str, Path], *, banned_lines: set[str], heldout_fraction: float = 0.1,
                max_chars: int = 0) -> Corpus:
    """Read and split the text.

    Args:
        paths: `data_paths`.
        banned_lines: Normalised Tibetan lines (`splits.normalise`) that must not be pretrained on: the held-out
            MT pairs' Tibetan sides.
        heldout_fraction: Share of DRCD *articles* (the last ones, in file order) kept out of pretraining for the
            OOD set; whole articles, so no paragraph of a held-out topic is seen.
        max_chars: When > 0, keep about this many characters of each pretraining language (`--quick`).

    Raises:
        CorpusError: A malformed file, or OOD text that also occurs in pretraining.
    """
    if not 0.0 < heldout_fraction < 0.5:
        raise CorpusError(f"heldout_fraction must be in (0, 0.5), got {heldout_fraction!r}")
    drcd = _squad_articles(paths["drcd"])
    n_held = max(1, round(len(drcd) * heldout_fraction))
    train_articles, held_articles = drcd[:-n_held], drcd[-n_held:]
    chinese = [p for article in train_articles for p in article]
    chinese += [p for article in _squad_articles(paths["cmrc_trial"]) for p in article]
    texts = [str(r.get("text", "")).strip() for key in ("tibetan_train", "tibetan_dev") for r in _jsonl(paths[key])]
    tibetan, removed = without_lines([t for t in texts if t], banned_lines)
    ood = [p for article in held_articles for p in article]
    ood += [p for article in _squad_articles(paths["cmrc_dev"]) for p in article]
    chinese, tibetan, ood = (list(dict.fromkeys(x)) for x in (chinese, tibetan, ood))  # CMRC repeats contexts
    if max_chars > 0:
        chinese, tibetan = _first_chars(chinese, max_chars), _first_chars(tibetan, max_chars)
    leaked = set(ood) & set(chinese)
    if leaked:
        raise CorpusError(f"{len(leaked)} OOD passages also occur in the pretraining text")
    return Corpus(chinese=chinese, tibetan=tibetan, ood=ood, heldout_articles=n_held, tibetan_lines_removed=removed)


def _first_chars(texts: list[str], budget: int) -> list[str]:
    out, used = [], 0
    for t in texts:
        if used >= budget:
            break
        out.append(t)
        used += len(t)
    return out
