"""The real text of the reproduction: what the base model is pretrained on and what measures its drift.

All of it is read from the data root (``$SEMGRPO_DATA``, else ``~/.cache/semgrpo/data``; ``python bin/get_data.py``
fills it), never copied into the project:

- pretraining: DRCD paragraphs (Traditional Chinese Wikipedia) except a held-out slice of articles, the
  CMRC 2018 *trial* contexts, and the Tibetan texts of ``bo_title_openpecha/train.jsonl``. Never the MT
  pairs: the base must not know the task.
- OOD (the alignment-tax passages): the held-out DRCD articles' paragraphs, then the CMRC 2018 *dev*
  contexts. None of it is in pretraining (checked when the corpus is built).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from semgrpo.data_root import GET_DATA, data_root

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = data_root()  # the root when this module was imported; callers pass data_root() to follow $SEMGRPO_DATA

# (folder, file) of every input, so a missing one is named before anything runs.
FILES = {
    "drcd": ("drcd", "dev.json"),
    "cmrc_trial": ("cmrc2018", "trial.json"),
    "cmrc_dev": ("cmrc2018", "dev.json"),
    "tibetan": ("bo_title_openpecha", "train.jsonl"),
    "mt_train": ("bo_zh_openpecha", "train.jsonl"),
    "mt_dev": ("bo_zh_openpecha", "dev.jsonl"),
}


class CorpusError(ValueError):
    """A data file is missing or not what the reproduction expects."""


@dataclass(frozen=True)
class Corpus:
    """Pretraining text and OOD passages, in a fixed order."""

    chinese: list[str]
    tibetan: list[str]
    ood: list[str]
    heldout_articles: int

    @property
    def pretraining(self) -> list[str]:
        return self.chinese + self.tibetan


def data_paths(data_dir: str | Path = DEFAULT_DATA) -> dict[str, Path]:
    """The input files under ``data_dir``; a missing one is a `CorpusError` naming it."""
    data_dir = Path(data_dir)
    paths = {key: data_dir / folder / name for key, (folder, name) in FILES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        fetch = GET_DATA if data_dir == data_root() else f"{GET_DATA} --root {data_dir}"
        raise CorpusError(f"missing data file(s): {', '.join(missing)}; fetch them with: {fetch}")
    return paths


def _squad_articles(path: Path) -> list[list[str]]:
    """Paragraph contexts per article of a SQuAD-layout JSON file (DRCD, CMRC 2018)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [[p["context"].strip() for p in article["paragraphs"]] for article in data["data"]]
    except json.JSONDecodeError as exc:
        raise CorpusError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except (KeyError, TypeError):
        raise CorpusError(f"{path}: expected SQuAD-layout JSON with data[].paragraphs[].context") from None


def _jsonl_field(path: Path, field: str) -> list[str]:
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)[field]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise CorpusError(f"{path}:{n}: expected a JSON object with a {field!r} string") from None
            if not isinstance(value, str):
                raise CorpusError(f"{path}:{n}: {field!r} is not a string")
            out.append(value.strip())
    return out


def load_corpus(data_dir: str | Path = DEFAULT_DATA, *, heldout_fraction: float = 0.1,
                max_chars: int = 0) -> Corpus:
    """Read and split the text.

    Args:
        data_dir: A folder laid out like the data root.
        heldout_fraction: Share of DRCD *articles* (the last ones, in file order) kept out of pretraining
            for the OOD set; whole articles, so no paragraph of a held-out topic is seen.
        max_chars: When > 0, keep about this many characters of each pretraining language (``--quick``).

    Raises:
        CorpusError: A missing or malformed file, or OOD text that also occurs in pretraining.
    """
    if not 0.0 < heldout_fraction < 0.5:
        raise CorpusError(f"heldout_fraction must be in (0, 0.5), got {heldout_fraction!r}")
    paths = data_paths(data_dir)
    drcd = _squad_articles(paths["drcd"])
    n_held = max(1, round(len(drcd) * heldout_fraction))
    train_articles, held_articles = drcd[:-n_held], drcd[-n_held:]
    chinese = [p for article in train_articles for p in article]
    chinese += [p for article in _squad_articles(paths["cmrc_trial"]) for p in article]
    tibetan = [t for t in _jsonl_field(paths["tibetan"], "text") if t]
    ood = [p for article in held_articles for p in article]
    ood += [p for article in _squad_articles(paths["cmrc_dev"]) for p in article]
    chinese, tibetan, ood = (list(dict.fromkeys(x)) for x in (chinese, tibetan, ood))  # CMRC repeats contexts
    if max_chars > 0:
        chinese, tibetan = _first_chars(chinese, max_chars), _first_chars(tibetan, max_chars)
    leaked = set(ood) & set(chinese)
    if leaked:
        raise CorpusError(f"{len(leaked)} OOD passages also occur in the pretraining text")
    return Corpus(chinese=chinese, tibetan=tibetan, ood=ood, heldout_articles=n_held)


def _first_chars(texts: list[str], budget: int) -> list[str]:
    out, used = [], 0
    for t in texts:
        if used >= budget:
            break
        out.append(t)
        used += len(t)
    return out
