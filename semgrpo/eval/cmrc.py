"""CMRC 2018 EM / F1, as the benchmark's official evaluation script computes them.

The rules (squad-style-data/cmrc2018_evaluate.py of ymcui/cmrc2018, v5 of the benchmark):

- Text is lower-cased and stripped of surrounding whitespace.
- A fixed list of punctuation marks (`CMRC_PUNCTUATION`) is removed before scoring. The official list
  holds the two-character entry "……" while it compares one character at a time, so that entry never
  matches: a lone or doubled "…" is *not* removed. We reproduce this quirk.
- Segmentation: each CJK character in U+4E00-U+9FA5 is one token (and so would be each listed
  punctuation mark, but F1 removes them first); runs of any other characters are split into words by
  ``nltk.word_tokenize(run, preserve_line=True)``, i.e. NLTK's current word tokenizer
  (`nltk.tokenize.NLTKWordTokenizer`, the improved Treebank rules: "——" -> ["—", "—"],
  "«a»" -> ["«", "a", "»"], "'a' b" -> ["'", "a", "'", "b"]). It is pure regex: no data download.
- F1 of one prediction against one gold answer uses the longest common *contiguous* run of tokens:
  precision = run / len(prediction tokens), recall = run / len(answer tokens); the best over the gold
  answers counts. EM is 1 when the punctuation-free strings of prediction and some answer are equal.
- Both are averaged over every question of the dataset (a question without a prediction scores 0) and
  reported x100; Avg = (EM + F1) / 2.

Differences from the official script, on purpose: it calls ``nltk.word_tokenize(run)``, which first
splits the run into sentences with Punkt (a data download) and then applies the same word tokenizer to
each sentence; we pass ``preserve_line=True`` and so skip the sentence split. The tokens differ only
inside a non-CJK run that holds several sentences: a period in the middle of such a run stays attached
to its word here ("went. he" -> ["went.", "he"]), where Punkt would end a sentence there. (Releases of
this module before issue #11 used the old ``TreebankWordTokenizer``, which kept "——", "«a»" and a
leading "'" attached and so disagreed with the official script on current NLTK.) The official script
reports unanswered questions as "skip"; we report them as ``unanswered`` and use ``skipped`` for
predictions whose id is not in the dataset (not scored).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["CMRC_PUNCTUATION", "cmrc_scores", "cmrc_segment", "cmrc_remove_punctuation", "cmrc_em", "cmrc_f1"]

# The official script's punctuation list (order irrelevant). "……" is two characters and never matches.
CMRC_PUNCTUATION: tuple[str, ...] = (
    "-", ":", "_", "*", "^", "/", "\\", "~", "`", "+", "=",
    "\uff0c", "\u3002", "\uff1a", "\uff1f", "\uff01", "\u201c", "\u201d", "\uff1b", "\u2019",
    "\u300a", "\u300b", "\u2026\u2026", "\u00b7", "\u3001",
    "\u300c", "\u300d", "\uff08", "\uff09", "\uff0d", "\uff5e", "\u300e", "\u300f",
)
_PUNCT = frozenset(CMRC_PUNCTUATION)  # a one-character string can only match one-character entries

_NLTK_WORD_TOKENIZE = None


def _word_tokenize(text: str) -> list[str]:
    """``nltk.word_tokenize(text, preserve_line=True)``: the official script's tokenizer minus Punkt."""
    global _NLTK_WORD_TOKENIZE
    if _NLTK_WORD_TOKENIZE is None:
        try:
            from nltk.tokenize import word_tokenize
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("cmrc_scores needs nltk (pip install nltk); no data download is needed") from e
        _NLTK_WORD_TOKENIZE = word_tokenize
    return _NLTK_WORD_TOKENIZE(text, preserve_line=True)


def _is_cjk(char: str) -> bool:
    return "\u4e00" <= char <= "\u9fa5"


def cmrc_segment(text: str, *, remove_punctuation: bool = False) -> list[str]:
    """Split text into CMRC tokens: one per CJK character or listed mark, NLTK words elsewhere.

    Args:
        text: Any string; lower-cased and stripped first.
        remove_punctuation: Drop the marks of `CMRC_PUNCTUATION` before segmenting (F1 does).

    Returns:
        The tokens, in order.
    """
    text = str(text).lower().strip()
    tokens: list[str] = []
    run: list[str] = []
    for ch in text:
        if ch in _PUNCT:
            if remove_punctuation:
                continue
        elif not _is_cjk(ch):
            run.append(ch)
            continue
        if run:
            tokens.extend(_word_tokenize("".join(run)))
            run = []
        tokens.append(ch)
    if run:
        tokens.extend(_word_tokenize("".join(run)))
    return tokens


def cmrc_remove_punctuation(text: str) -> str:
    """Lower-case, strip, and delete the marks of `CMRC_PUNCTUATION` (the string EM compares)."""
    return "".join(ch for ch in str(text).lower().strip() if ch not in _PUNCT)


def _longest_common_run(a: list[str], b: list[str]) -> int:
    """Length of the longest contiguous token run shared by a and b (dynamic programming, O(len a * len b))."""
    best = 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b):
            if x == y:
                cur[j + 1] = prev[j] + 1
                if cur[j + 1] > best:
                    best = cur[j + 1]
        prev = cur
    return best


def cmrc_f1(answers: list[str], prediction: str) -> float:
    """Best F1 (in [0, 1]) of one prediction over its gold answers, by longest common contiguous run."""
    pred = cmrc_segment(prediction, remove_punctuation=True)
    best = 0.0
    for ans in answers:
        gold = cmrc_segment(ans, remove_punctuation=True)
        run = _longest_common_run(gold, pred)
        if run == 0:
            continue
        p, r = run / len(pred), run / len(gold)
        best = max(best, 2 * p * r / (p + r))
    return best


def cmrc_em(answers: list[str], prediction: str) -> float:
    """1.0 when the punctuation-free prediction equals some punctuation-free gold answer, else 0.0."""
    pred = cmrc_remove_punctuation(prediction)
    return float(any(cmrc_remove_punctuation(a) == pred for a in answers))


def _questions(dataset: Mapping[str, Any]):
    """Yield (id, [answer texts]) for every question of a SQuAD-style CMRC dataset, validating the shape."""
    if not isinstance(dataset, Mapping) or not isinstance(dataset.get("data"), list):
        raise ValueError(f"dataset must be the parsed SQuAD-style JSON, a dict with a 'data' list; "
                         f"got {type(dataset).__name__}")
    for a, article in enumerate(dataset["data"]):
        paragraphs = article.get("paragraphs") if isinstance(article, Mapping) else None
        if not isinstance(paragraphs, list):
            raise ValueError(f"dataset['data'][{a}] must be a dict with a 'paragraphs' list")
        for p, para in enumerate(paragraphs):
            qas = para.get("qas") if isinstance(para, Mapping) else None
            if not isinstance(qas, list):
                raise ValueError(f"dataset['data'][{a}]['paragraphs'][{p}] must be a dict with a 'qas' list")
            for q, qa in enumerate(qas):
                where = f"dataset['data'][{a}]['paragraphs'][{p}]['qas'][{q}]"
                if not isinstance(qa, Mapping) or not isinstance(qa.get("id"), str):
                    raise ValueError(f"{where} must be a dict with a string 'id'")
                answers = qa.get("answers")
                if not isinstance(answers, list) or not answers or not all(
                        isinstance(x, Mapping) and isinstance(x.get("text"), str) for x in answers):
                    raise ValueError(f"{where} (id {qa['id']!r}) must have a non-empty 'answers' list of "
                                     f"{{'text': str}}; got {answers!r}")
                yield qa["id"].strip(), [x["text"] for x in answers]


def cmrc_scores(dataset: Mapping[str, Any], predictions: Mapping[str, str]) -> dict:
    """Score predictions on CMRC 2018 exactly as the official script does (rules in the module docstring).

    Args:
        dataset: The parsed JSON of a SQuAD-style CMRC file (``{"data": [{"paragraphs": [{"qas":
            [{"id", "answers": [{"text"}]}]}]}]}``), e.g. ``json.load`` of ``cmrc2018/dev.json``.
        predictions: Question id -> predicted answer text.

    Returns:
        ``{"em", "f1", "avg"}`` in [0, 100] averaged over all questions (unanswered ones score 0);
        ``"total"``: number of questions; ``"skipped"``: predictions whose id is not in the dataset (not
        scored); ``"unanswered"``: questions without a prediction.

    Raises:
        ValueError: a malformed dataset, a dataset without questions, non-str predictions or ids.
    """
    if not isinstance(predictions, Mapping):
        raise ValueError(f"predictions must be a dict id -> text, got {type(predictions).__name__}")
    for k, v in predictions.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ValueError(f"predictions must map str ids to str texts; got {k!r}: {type(v).__name__}")
    preds = {k.strip(): v for k, v in predictions.items()}
    em = f1 = 0.0
    total = unanswered = 0
    seen: set[str] = set()
    for qid, answers in _questions(dataset):
        total += 1
        seen.add(qid)
        if qid not in preds:
            unanswered += 1
            continue
        em += cmrc_em(answers, preds[qid])
        f1 += cmrc_f1(answers, preds[qid])
    if total == 0:
        raise ValueError("dataset holds no questions: nothing to score")
    em, f1 = 100.0 * em / total, 100.0 * f1 / total
    return {"em": em, "f1": f1, "avg": (em + f1) / 2, "total": total,
            "skipped": sum(1 for k in preds if k not in seen), "unanswered": unanswered}
