"""Evaluation metrics: BLEU / chrF / chrF++ / ROUGE-L, CMRC 2018 EM/F1, OOD token NLL and KL, summary statistics.

Scales: BLEU, chrF, chrF++ and ROUGE-L are corpus-level scores in [0, 100] (sacrebleu's scale; the paper
prints BLEU and ROUGE-L divided by 100). CMRC EM/F1/Avg are in [0, 100] as the official script reports them.

chrF++ is chrF plus word unigrams and bigrams (sacrebleu's ``CHRF(word_order=2)``), averaged over the 6
character and 2 word orders. Its character n-grams are chrF's. sacrebleu's words are the whitespace-separated
tokens (ASCII punctuation split off their ends), which would make a whole Chinese line one "word", so the
text it sees has the script's units spaced out: the words are the syllables for Tibetan (as in BLEU), and for
Chinese each Han character and each CJK or full-width symbol, with runs of other characters (Latin words,
numbers) kept whole between whitespace.

Tokenization by output script (``script``: anything `semgrpo.script.resolve_script` takes, e.g. ``"tibetan"``,
``"Hani"``, ``"Khmr"``, ``"Arab"``, ``"Hani+Hira+Kana"``); the unit is the script's (`semgrpo.script.text`):

- syllables (Tibetan): tokens are syllables, split at tsheg and shad (and their variants) and whitespace by
  `semgrpo.script.text.tibetan_syllables`; the delimiters are dropped. BLEU sees the syllables joined by one
  space with sacrebleu's ``tokenize="none"``; chrF sees the same string (chrF ignores whitespace, so its
  character n-grams run over syllable letters without tsheg/shad), and so does chrF++ (its words: the
  syllables); ROUGE-L's tokens are the syllables.
- characters, Chinese (Han alone): BLEU uses sacrebleu's ``zh`` tokenizer; chrF the raw text; chrF++ the raw text
  with spaces around each Han character and CJK/full-width symbol; ROUGE-L's tokens are the characters that are
  not whitespace.
- characters, other scripts without word spaces (Thai, Lao, Khmer, Myanmar, Yi, Japanese kana...): the tokens
  are `semgrpo.script.text.character_units` (each grapheme cluster of such a script, each run of other
  non-space characters); BLEU sees them joined by one space with ``tokenize="none"``, chrF the raw text,
  chrF++ the tokens joined by one space (its words), ROUGE-L the tokens.
- words, Latin: BLEU uses sacrebleu's default ``13a``; chrF and chrF++ the raw text; ROUGE-L rouge-score's
  default tokenizer (lower-cased alphanumeric words).
- words, every other script (Cyrillic, Arabic, Ethiopic, Mongolian, Hangul...): BLEU uses sacrebleu's ``intl``
  tokenizer (it splits off Unicode punctuation and symbols, such as ``،`` and ``።``); chrF and chrF++ the raw
  text; ROUGE-L's tokens are `semgrpo.script.text.word_units` (lower-cased runs of letters, marks and digits:
  rouge-score's default keeps only ASCII letters and digits, so it would find no word at all).
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch

from semgrpo.eval.cmrc import cmrc_scores
from semgrpo.script.names import resolve_script
from semgrpo.script.text import character_units, tibetan_syllables, unit_kind, word_units

__all__ = ["metric_scheme", "bleu", "sentence_bleu", "chrf", "chrf_pp", "chrf_pp_text", "rouge_l", "cmrc_scores",
           "token_nll_kl", "summarize", "nll_kl_summary", "similarity_stats", "metric_tokens"]

# The tokenization schemes of the module docstring, and sacrebleu's BLEU tokenizer for each.
SCHEMES = ("syllable", "han", "character", "latin", "word")
_BLEU_TOKENIZE = {"syllable": "none", "han": "zh", "character": "none", "latin": "13a", "word": "intl"}
# One chrF++ word each in Chinese text: CJK radicals, CJK symbols and punctuation, Han ideographs (extension A,
# the main block, compatibility ideographs, extensions B and on), CJK compatibility forms, half/full-width forms.
_HAN_WORD_CHAR = re.compile("([\u2e80-\u2fdf\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
                            "\ufe30-\ufe4f\uff00-\uffef\U00020000-\U0003ffff])")


def metric_scheme(script) -> str:
    """The tokenization scheme of an output script (module docstring): one of `SCHEMES`.

    Raises:
        ValueError: unknown script (the message lists the valid names).
    """
    try:
        codes = resolve_script(script)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"metric script: {exc}") from None
    if codes == ("Hani",):
        return "han"
    if codes == ("Latn",):
        return "latin"
    return unit_kind(codes)


def _check_pairs(hypotheses: Sequence[str], references: Sequence[str], script) -> str:
    """The scheme of `script`, after checking both lists."""
    scheme = metric_scheme(script)
    for name, xs in (("hypotheses", hypotheses), ("references", references)):
        if isinstance(xs, str) or not isinstance(xs, Sequence):
            raise ValueError(f"{name} must be a list of strings, got {type(xs).__name__}")
        bad = next((i for i, x in enumerate(xs) if not isinstance(x, str)), None)
        if bad is not None:
            raise ValueError(f"{name}[{bad}] must be a str, got {type(xs[bad]).__name__}")
    if len(hypotheses) != len(references):
        raise ValueError(f"hypotheses and references must have the same length, got "
                         f"{len(hypotheses)} and {len(references)}")
    if not hypotheses:
        raise ValueError("hypotheses and references are empty: nothing to score")
    return scheme


def metric_tokens(text: str, *, script) -> list[str]:
    """The tokens ROUGE-L counts for one text (see the module docstring); Tibetan: syllables."""
    scheme = metric_scheme(script)
    if scheme == "syllable":
        return tibetan_syllables(text)
    if scheme == "han":
        return [c for c in text if not c.isspace()]
    if scheme == "character":
        return character_units(text)
    if scheme == "latin":
        from rouge_score.tokenize import tokenize
        return tokenize(text, None)
    return word_units(text)


def _prepare(texts: Sequence[str], scheme: str) -> list[str]:
    """What BLEU and chrF score: the units joined by spaces where BLEU's tokenizer is "none", else the text."""
    if scheme == "syllable":
        return [" ".join(tibetan_syllables(t)) for t in texts]
    if scheme == "character":
        return [" ".join(character_units(t)) for t in texts]
    return list(texts)


def chrf_pp_text(text: str, *, script) -> str:
    """The string chrF++ scores for one text: its words separated by single spaces (module docstring).

    Removing the spaces gives the string chrF scores, so chrF++'s character n-grams are chrF's.
    """
    scheme = metric_scheme(script)
    if scheme == "han":
        return " ".join(_HAN_WORD_CHAR.sub(r" \1 ", text).split())
    return _prepare([text], scheme)[0]  # syllables or characters spaced out; words: the text


def bleu(hypotheses: Sequence[str], references: Sequence[str], *, script) -> float:
    """Corpus BLEU-4 (sacrebleu defaults, one reference per hypothesis), in [0, 100].

    Args:
        hypotheses: Model outputs, one per sample.
        references: Reference texts, aligned with `hypotheses`.
        script: Output script: an ISO 15924 code or Unicode name, or several joined by ``+``
            (`semgrpo.script.resolve_script`); it decides the tokenization (module docstring).

    Raises:
        ValueError: unknown script, non-str items, length mismatch or empty input.
    """
    import sacrebleu

    scheme = _check_pairs(hypotheses, references, script)
    return float(sacrebleu.corpus_bleu(_prepare(hypotheses, scheme), [_prepare(references, scheme)],
                                       tokenize=_BLEU_TOKENIZE[scheme]).score)


def sentence_bleu(hypothesis: str, reference: str, *, script) -> float:
    """Sentence BLEU of one output (sacrebleu's defaults and smoothing), in [0, 100], on the script's units as
    `bleu` tokenizes them."""
    import sacrebleu

    scheme = metric_scheme(script)
    hyp, ref = _prepare([hypothesis, reference], scheme)
    return float(sacrebleu.sentence_bleu(hyp, [ref], tokenize=_BLEU_TOKENIZE[scheme]).score)


def chrf(hypotheses: Sequence[str], references: Sequence[str], *, script) -> float:
    """Corpus chrF (sacrebleu defaults: character 6-grams, beta 2), in [0, 100].

    Args and Raises: as `bleu`.
    """
    import sacrebleu

    scheme = _check_pairs(hypotheses, references, script)
    return float(sacrebleu.corpus_chrf(_prepare(hypotheses, scheme), [_prepare(references, scheme)]).score)


def chrf_pp(hypotheses: Sequence[str], references: Sequence[str], *, script) -> float:
    """Corpus chrF++ (sacrebleu's CHRF with word_order=2: character 6-grams and word 2-grams, beta 2), in [0, 100].

    The words are the script's units (`chrf_pp_text`): Tibetan syllables, characters of the scripts without word
    spaces, words elsewhere.

    Args and Raises: as `bleu`.
    """
    from sacrebleu.metrics import CHRF

    _check_pairs(hypotheses, references, script)
    hyps = [chrf_pp_text(t, script=script) for t in hypotheses]
    refs = [chrf_pp_text(t, script=script) for t in references]
    return float(CHRF(word_order=2).corpus_score(hyps, [refs]).score)


class _ScriptTokenizer:
    """rouge-score tokenizer interface (``tokenize(text) -> list[str]``) over `metric_tokens`."""

    def __init__(self, script):
        self.script = script

    def tokenize(self, text: str) -> list[str]:
        return metric_tokens(text, script=self.script)


def rouge_l(hypotheses: Sequence[str], references: Sequence[str], *, script) -> float:
    """ROUGE-L F1 (rouge-score, LCS of tokens) averaged over the samples, in [0, 100].

    The tokens are the script's units: Tibetan syllables, characters, words (module docstring). A pair
    where either side has no token scores 0.

    Args and Raises: as `bleu`.
    """
    _check_pairs(hypotheses, references, script)
    try:
        from rouge_score import rouge_scorer
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("rouge_l needs the rouge-score package (pip install rouge-score)") from e
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_ScriptTokenizer(script))
    f = [scorer.score(ref, hyp)["rougeL"].fmeasure for hyp, ref in zip(hypotheses, references)]
    return 100.0 * float(np.mean(f))


def _as_values(values, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().float().cpu().numpy()
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: nothing to summarize")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise ValueError(f"{name} holds {bad} non-finite value(s); expected finite numbers")
    return arr


def summarize(values) -> dict:
    """Mean, median and 90th percentile (linear interpolation, numpy's default) of a 1-D sample.

    Shape:
        values: [N] (list, numpy array or tensor), N >= 1, finite.
    """
    v = _as_values(values, "values")
    return {"mean": float(v.mean()), "median": float(np.median(v)), "p90": float(np.percentile(v, 90))}


def similarity_stats(sims) -> dict:
    """Mean, median, 10th and 90th percentile of per-sample semantic similarities.

    Shape:
        sims: [N] (list, numpy array or tensor), N >= 1, finite.
    """
    v = _as_values(sims, "sims")
    return {"mean": float(v.mean()), "median": float(np.median(v)),
            "p10": float(np.percentile(v, 10)), "p90": float(np.percentile(v, 90))}


@torch.no_grad()
def token_nll_kl(base_logits: torch.Tensor, adapted_logits: torch.Tensor, target_ids: torch.Tensor,
                 mask: torch.Tensor, *, chunk_rows: int = 1024) -> dict:
    """Per-token NLL of the target under both models and KL(base || adapted) of their next-token laws.

    Position t of the logits predicts ``target_ids[:, t]`` (already shifted, as in `grpo_loss`). Only
    positions where `mask` is set are measured; the math is fp32 on the logits' device, ``chunk_rows``
    selected positions at a time so no fp32 [B, T, V] copy is made.

        nll = -log softmax(logits)[target];   kl = sum_v p_base(v) * (log p_base(v) - log p_adapted(v))

    Args:
        base_logits: Logits of the base (reference) model.
        adapted_logits: Logits of the adapted model, same shape.
        target_ids: Target token ids in [0, V).
        mask: 1/True where a target token counts.
        chunk_rows: Positions processed per chunk (memory bound), >= 1.

    Returns:
        ``{"nll_base", "nll_adapted", "kl", "delta_nll"}``: float64 numpy arrays [N] over the masked
        positions in row-major order, N = mask.sum(); ``delta_nll = nll_adapted - nll_base`` per token.
        `nll_kl_summary` turns (concatenated) arrays into the paper's mean / median / p90 table.

    Shape:
        base_logits, adapted_logits: [B, T, V]; target_ids, mask: [B, T].

    Raises:
        ValueError: shape mismatch, non-float logits, ids out of range, a mask that selects nothing.
    """
    if not isinstance(base_logits, torch.Tensor) or base_logits.dim() != 3:
        raise ValueError(f"base_logits must be a [B, T, V] tensor, got "
                         f"{getattr(base_logits, 'shape', type(base_logits).__name__)}")
    if not isinstance(adapted_logits, torch.Tensor) or adapted_logits.shape != base_logits.shape:
        raise ValueError(f"adapted_logits must have the shape of base_logits {tuple(base_logits.shape)}, got "
                         f"{getattr(adapted_logits, 'shape', type(adapted_logits).__name__)}")
    if not (base_logits.is_floating_point() and adapted_logits.is_floating_point()):
        raise ValueError(f"logits must be floating point, got {base_logits.dtype} and {adapted_logits.dtype}")
    b, t, v = base_logits.shape
    for name, x in (("target_ids", target_ids), ("mask", mask)):
        if not isinstance(x, torch.Tensor) or tuple(x.shape) != (b, t):
            raise ValueError(f"{name} must be a [B, T] = [{b}, {t}] tensor, got "
                             f"{getattr(x, 'shape', type(x).__name__)}")
    if target_ids.is_floating_point() or target_ids.dtype == torch.bool:
        raise ValueError(f"target_ids must be an integer tensor, got {target_ids.dtype}")
    if not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be an int >= 1, got {chunk_rows!r}")
    sel = mask.to(base_logits.device).bool()
    if not sel.any():
        raise ValueError("mask selects no token: nothing to measure")
    ids = target_ids.to(base_logits.device)[sel].long()
    if ids.min() < 0 or ids.max() >= v:
        raise ValueError(f"target_ids must lie in [0, {v}) where mask is set, got range "
                         f"[{int(ids.min())}, {int(ids.max())}]")
    base_rows, adapted_rows = base_logits[sel], adapted_logits.to(base_logits.device)[sel]  # [N, V]
    nll_b, nll_a, kl = [], [], []
    for s in range(0, ids.numel(), chunk_rows):
        lb = torch.log_softmax(base_rows[s:s + chunk_rows].float(), dim=-1)
        la = torch.log_softmax(adapted_rows[s:s + chunk_rows].float(), dim=-1)
        tgt = ids[s:s + chunk_rows, None]
        nll_b.append(-lb.gather(-1, tgt).squeeze(-1))
        nll_a.append(-la.gather(-1, tgt).squeeze(-1))
        pb = lb.exp()  # a base probability of exactly 0 contributes 0, whatever the adapted one is
        kl.append(torch.where(pb > 0, pb * (lb - la), torch.zeros_like(pb)).sum(-1).clamp_min(0.0))
    as_np = lambda xs: torch.cat(xs).double().cpu().numpy()
    out = {"nll_base": as_np(nll_b), "nll_adapted": as_np(nll_a), "kl": as_np(kl)}
    out["delta_nll"] = out["nll_adapted"] - out["nll_base"]
    return out


def nll_kl_summary(token_stats: dict) -> dict:
    """Paper Appendix C numbers from `token_nll_kl` outputs (concatenate batches first).

    Returns:
        ``{"nll_base", "nll_adapted", "kl"}``: each `summarize`d; ``"delta"``: nll_adapted minus
        nll_base for each of mean, median, p90 (the paper's "change vs the base model").

    Shape:
        token_stats["nll_base"], ["nll_adapted"], ["kl"]: [N] each, same N.
    """
    missing = [k for k in ("nll_base", "nll_adapted", "kl") if k not in token_stats]
    if missing:
        raise ValueError(f"token_stats misses {missing}; expected the dict of token_nll_kl")
    sizes = {k: len(token_stats[k]) for k in ("nll_base", "nll_adapted", "kl")}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"token_stats arrays must have one length, got {sizes}")
    out = {k: summarize(token_stats[k]) for k in ("nll_base", "nll_adapted", "kl")}
    out["delta"] = {k: out["nll_adapted"][k] - out["nll_base"][k] for k in ("mean", "median", "p90")}
    return out
