"""CMRC 2018 segmentation uses the tokenizer of current NLTK's ``word_tokenize`` (issue #11).

The official evaluation script splits every run of non-CJK characters with ``nltk.word_tokenize``, which
on current NLTK is ``NLTKWordTokenizer`` (the improved Treebank tokenizer). These tests rebuild the
official ``mixed_segmentation`` here, in a few lines, around ``nltk.word_tokenize(run,
preserve_line=True)`` (no Punkt data needed) and require `cmrc_segment` to give the same tokens.
"""
from __future__ import annotations

import pytest

nltk_tokenize = pytest.importorskip("nltk.tokenize")

from semgrpo.eval.cmrc import CMRC_PUNCTUATION, cmrc_em, cmrc_f1, cmrc_segment


def reference_segmentation(text: str, remove_punctuation: bool = False) -> list[str]:
    """The official mixed_segmentation, restated: CJK characters (U+4E00-U+9FA5) and listed marks are
    single tokens, other runs go to ``nltk.word_tokenize(run, preserve_line=True)``."""
    text = text.lower().strip()
    out, run = [], ""
    for ch in text:
        if remove_punctuation and ch in CMRC_PUNCTUATION:
            continue
        if "\u4e00" <= ch <= "\u9fa5" or ch in CMRC_PUNCTUATION:
            if run:
                out.extend(nltk_tokenize.word_tokenize(run, preserve_line=True))
                run = ""
            out.append(ch)
        else:
            run += ch
    if run:
        out.extend(nltk_tokenize.word_tokenize(run, preserve_line=True))
    return out


TEXTS = [
    "——",  # two em dashes: ['—', '—'] on current NLTK, one token on the old Treebank tokenizer
    "1949——1976年",
    "鲁迅——中国现代文学的奠基人",
    "a—b",
    '"Hello," she said.',  # straight double quotes -> `` and ''
    "'quoted' text",  # a leading single quote is split off
    "“引号”和‘单引号’",  # curly quotes (“ ” ’ are listed marks, ‘ is not)
    "«Le Monde» и «Правда»",  # guillemets
    "`code`",
    "don't stop.",
    "U.S.A. isn't e-mail: a@b.com, 1,000.5%!",
    "Apple公司 iPhone 7手机",
    "NBA（美国职业篮球联赛）的MVP是谁?",
    "C++ 和 C# 的区别; cannot gonna wanna",
    "等等……",  # the official list's two-character "……" never matches one character
    "Mr. Smith (born 1950) said: “it's fine...”",
    "  Mixed CASE  ",
    "",
]


@pytest.mark.parametrize("remove_punctuation", [False, True])
@pytest.mark.parametrize("text", TEXTS)
def test_cmrc_segment_equals_word_tokenize(text, remove_punctuation):
    assert cmrc_segment(text, remove_punctuation=remove_punctuation) == reference_segmentation(
        text, remove_punctuation
    )


def test_cmrc_segment_em_dash_pair_is_two_tokens():
    assert cmrc_segment("——") == ["—", "—"]
    assert cmrc_segment("1949——1976年") == ["1949", "—", "—", "1976", "年"]
    assert cmrc_segment("«le monde»") == ["«", "le", "monde", "»"]


# (gold, prediction, F1 with the old TreebankWordTokenizer, F1 with current word_tokenize)
F1_CHANGES = [
    # gold [1949——1976] (one token) vs [1949 — — 1976]; pred [1949]: run 0 -> run 1, P=1, R=1/4
    ("1949——1976", "1949", 0.0, 0.4),
    # gold [«le monde»] vs [« le monde »]; pred [le monde]: run 0 -> run 2, P=1, R=1/2
    ("«Le Monde»", "le monde", 0.0, 2 / 3),
    # gold ['quoted text] vs [' quoted ' text]... pred [quoted]: run 0 -> 1, P=1, R=1/4
    ("'quoted' text", "quoted", 0.0, 0.4),
]


@pytest.mark.parametrize("gold, pred, old_f1, new_f1", F1_CHANGES, ids=["em-dash", "guillemets", "single-quote"])
def test_cmrc_f1_follows_the_current_tokenizer(gold, pred, old_f1, new_f1):
    got = cmrc_f1([gold], pred)
    assert got == pytest.approx(new_f1, abs=1e-12), f"F1 {got} (old Treebank tokenizer gives {old_f1})"
    assert cmrc_em([gold], pred) == 0.0
