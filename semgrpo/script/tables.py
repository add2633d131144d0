"""Character classes of the script checker, for every Unicode script, and the tables both backends read.

Every code point U+0000..U+10FFFF falls in exactly one class of `SCRIPT_CLASSES`:

- one class per script of the Unicode Character Database (`SCRIPTS`, ISO 15924 codes in code order: ``Adlm``
  ... ``Tibt`` ... ``Zanb``): the code points whose Script property (Scripts.txt) is that script and whose
  general category is a letter (L*) or a combining mark (M*: vowel signs, subjoined consonants, viramas);
- ``common_letter``: letters and marks of Script=Common or Inherited: neutral. Among them: U+0301 and the other
  combining marks of no script, the Arabic harakat U+064B-0655, the Katakana-Hiragana prolonged sound mark
  U+30FC, the modifier letters U+02B9-02DF, the mathematical alphanumerics U+1D400-1D7FF;
- ``digit`` (Nd), ``space`` (White_Space), ``punct`` (P*);
- ``other``: everything else: symbols, numbers other than decimal digits (Roman numerals, Tibetan half digits),
  controls, format characters (ZWJ, ZWNJ, ZWSP), private use, unassigned code points, lone surrogates.

The rule (issue #11, for every script since issue #29): only letters decide whether a text is in a script. The
letters of the target script count for it; letters of any other script are foreign; the rest (Common and
Inherited letters, digits, spaces, punctuation, symbols) is neutral. For Tibetan the letters are its consonants,
the om syllable U+0F00, the vowel signs and the subjoined consonants; tsheg U+0F0B, shad U+0F0D, the head marks
U+0F01-0F17 and the Tibetan digits are neutral.

Where the data comes from: `semgrpo.script.ucd`, generated from the UCD (Unicode 17.0.0) by
`semgrpo/script/generate_ucd.py`. The C path counts with `class_table()`, built from its ranges. The `regex`
path (`class_patterns()`) matches the same definitions with the `regex` module's own Unicode tables
(``\\p{Script=Tibt}``, ``\\p{L}``...); the pinned `regex` implements Unicode 17.0.0 too, and the tests compare
the two on every code point, so an upgrade of one without the other cannot pass unnoticed.

For a consistency check only three classes matter: the target's letters, foreign letters, and the neutral
rest. `consistency_table()` and `consistency_patterns()` give those for a target (one script or several).
"""
from __future__ import annotations

import functools

import numpy as np
import regex

from semgrpo.script import ucd

UNICODE_VERSION = ucd.UNICODE_VERSION
SCRIPTS: tuple[str, ...] = tuple(ucd.SCRIPT_NAMES)
"""ISO 15924 codes of every script with a letter, the letter classes, in column order."""
SCRIPT_NAMES: dict[str, str] = dict(ucd.SCRIPT_NAMES)
"""ISO 15924 code -> Unicode name (``"Tibt" -> "Tibetan"``)."""
SCRIPT_CLASSES: tuple[str, ...] = tuple(ucd.CLASSES) + ("other",)
"""Class names, in the column order of `semgrpo.script.script_profile`."""
LETTER_CLASSES: tuple[str, ...] = SCRIPTS
"""Classes that count as letters for consistency (the first ``len(LETTER_CLASSES)`` columns)."""
MAX_CODE_POINT = 0x10FFFF
# The three classes of a consistency check, in column order.
TARGET, FOREIGN, NEUTRAL = 0, 1, 2

# The regex definition of each class but "other", with the same UCD properties as `ucd` (see the docstring).
_LETTER_OR_MARK = r"[\p{L}\p{M}]"
_TRAILING_SETS = {
    "common_letter": rf"[[\p{{Script=Zyyy}}\p{{Script=Zinh}}]&&{_LETTER_OR_MARK}]",
    "digit": r"\p{Nd}",
    "space": r"\p{White_Space}",
    "punct": r"\p{P}",
}


def _letters_of(codes) -> str:
    """Regex V1 set of the letters and marks of these scripts."""
    return "[[" + "".join(rf"\p{{Script={c}}}" for c in codes) + "]&&" + _LETTER_OR_MARK + "]"


@functools.cache
def class_patterns() -> tuple[regex.Pattern, ...]:
    """Compiled run patterns (``[set]+``), one per class except the last (``other``).

    Returns:
        Tuple of ``len(SCRIPT_CLASSES) - 1`` compiled `regex` patterns; pattern ``k`` matches maximal runs of
        class ``k``. The classes are disjoint by definition (one Script value and one general category per
        code point). Code points matched by none of them are ``other``.
    """
    sets = [_letters_of([code]) for code in SCRIPTS] + list(_TRAILING_SETS.values())
    return tuple(regex.compile(s + "+", flags=regex.V1) for s in sets)


@functools.cache
def class_table() -> np.ndarray:
    """Class index of every code point, from the ranges of `semgrpo.script.ucd`.

    Returns:
        Read-only uint8 array of length 0x110000; entry ``cp`` is the index in `SCRIPT_CLASSES`.

    Shape:
        [0x110000]
    """
    if len(SCRIPT_CLASSES) > 255:
        raise ValueError(f"at most 255 classes are supported, got {len(SCRIPT_CLASSES)}")
    table = np.full(MAX_CODE_POINT + 1, len(SCRIPT_CLASSES) - 1, dtype=np.uint8)
    for first, last, k in ucd.RANGES:
        table[first : last + 1] = k
    table.flags.writeable = False
    return table


@functools.lru_cache(maxsize=64)
def consistency_table(codes: tuple[str, ...]) -> np.ndarray:
    """`TARGET` / `FOREIGN` / `NEUTRAL` of every code point for a target (resolved codes, see `names`).

    Shape:
        [0x110000], read-only uint8.
    """
    lut = np.full(len(SCRIPT_CLASSES), NEUTRAL, dtype=np.uint8)
    lut[: len(SCRIPTS)] = FOREIGN
    lut[[SCRIPTS.index(c) for c in codes]] = TARGET
    table = lut[class_table()]
    table.flags.writeable = False
    return table


@functools.lru_cache(maxsize=64)
def consistency_patterns(codes: tuple[str, ...]) -> tuple[regex.Pattern, regex.Pattern]:
    """(target letters, foreign letters) run patterns for a target, on the `regex` path."""
    target = _letters_of(codes)
    foreign = rf"[{_LETTER_OR_MARK}--[\p{{Script=Zyyy}}\p{{Script=Zinh}}]--{target}]"
    return (regex.compile(target + "+", flags=regex.V1), regex.compile(foreign + "+", flags=regex.V1))
