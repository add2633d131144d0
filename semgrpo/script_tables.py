"""Character classes of the script checker: the one table to edit to add a script.

Every code point U+0000..U+10FFFF falls in exactly one class of `SCRIPT_CLASSES`. The classes
are defined by the `regex` module's Unicode character sets below, made disjoint by priority (a
code point belongs to the first class whose set contains it). Both backends of `semgrpo.script`
read these definitions: the `regex` path matches the patterns directly, and the C path looks code
points up in a flat table (`class_table()`) built from the same patterns, so the two agree by
construction on every code point and the tests check that they agree on every string.

To add a low-resource script, add one entry to `SCRIPTS` (for example
``"mongolian": r"\\u1800-\\u18AF\\U00011660-\\U0001167F"``); it becomes a letter class and a valid
``script=`` for `semgrpo.script.script_consistent`. Nothing else changes, the C extension included.

Classes, in priority order:

- one class per entry of `SCRIPTS` (letters of that script):
  - ``tibetan``: the whole Tibetan block U+0F00-U+0FFF, i.e. letters, subjoined letters, vowel
    signs, digits, marks and the Tibetan punctuation (tsheg U+0F0B, shad U+0F0D, ...). Tibetan
    punctuation counts as Tibetan, never as foreign.
  - ``han``: the CJK Unified Ideographs block, its extensions A-J and the CJK Compatibility
    Ideographs blocks (whole blocks, unassigned positions included).
  - ``latin``: Unicode ``Script=Latin`` (as known to the installed `regex` module).
- ``other_letter``: any other letter (``\\p{L}``): Cyrillic, kana, Hangul, Arabic...
- ``digit``: decimal digits (``\\p{Nd}``).
- ``space``: white space (``\\p{White_Space}``).
- ``punct``: punctuation (``\\p{P}``), e.g. ``, . ! ， 。 「」``.
- ``other``: everything else: symbols, combining marks outside the script classes, controls
  (NUL included), format characters, private use, unassigned code points and lone surrogates.

The letter classes (the scripts plus ``other_letter``) are the ones that decide consistency; the
rest are neutral.
"""
from __future__ import annotations

import functools

import numpy as np
import regex

# Script letter classes: name -> contents of a regex V1 character set (what goes between [ ]).
# Edit this table to add a script; keep the names lower-case identifiers.
SCRIPTS: dict[str, str] = {
    "tibetan": r"\u0F00-\u0FFF",
    "han": (
        r"\u3400-\u4DBF"  # CJK Unified Ideographs Extension A
        r"\u4E00-\u9FFF"  # CJK Unified Ideographs
        r"\uF900-\uFAFF"  # CJK Compatibility Ideographs
        r"\U00020000-\U0002A6DF"  # Extension B
        r"\U0002A700-\U0002EE5F"  # Extensions C, D, E, F, I
        r"\U0002F800-\U0002FA1F"  # CJK Compatibility Ideographs Supplement
        r"\U00030000-\U0003347F"  # Extensions G, H, J
    ),
    "latin": r"\p{Latin}",
}

# Neutral / catch-all classes after the scripts: name -> regex V1 set contents (None = the rest).
_TRAILING: dict[str, str | None] = {
    "other_letter": r"\p{L}",
    "digit": r"\p{Nd}",
    "space": r"\p{White_Space}",
    "punct": r"\p{P}",
    "other": None,
}

SCRIPT_CLASSES: tuple[str, ...] = tuple(SCRIPTS) + tuple(_TRAILING)
"""Class names, in the column order of `semgrpo.script.script_profile`."""

LETTER_CLASSES: tuple[str, ...] = tuple(SCRIPTS) + ("other_letter",)
"""Classes that count as letters for consistency (the first ``len(LETTER_CLASSES)`` columns)."""

MAX_CODE_POINT = 0x10FFFF


def _class_sets() -> list[str]:
    """Regex V1 set expressions, one per class except ``other``, made disjoint by priority."""
    sets = []
    earlier: list[str] = []
    for body in [*SCRIPTS.values(), *(v for v in _TRAILING.values() if v is not None)]:
        expr = f"[{body}]"
        if earlier:
            expr = "[" + expr + "--[" + "".join(earlier) + "]]"
        sets.append(expr)
        earlier.append(f"[{body}]")
    return sets


@functools.lru_cache(maxsize=None)
def class_patterns() -> tuple[regex.Pattern, ...]:
    """Compiled run patterns (``[set]+``), one per class except the last (``other``).

    Returns:
        Tuple of ``len(SCRIPT_CLASSES) - 1`` compiled `regex` patterns; pattern ``k`` matches
        maximal runs of class ``k``. Code points matched by none of them are ``other``.
    """
    return tuple(regex.compile(s + "+", flags=regex.V1) for s in _class_sets())


@functools.lru_cache(maxsize=None)
def class_table() -> np.ndarray:
    """Class index of every code point, built from `class_patterns()`.

    Returns:
        Read-only uint8 array of length 0x110000; entry ``cp`` is the index in `SCRIPT_CLASSES`.

    Shape:
        [0x110000]
    """
    if len(SCRIPT_CLASSES) > 255:
        raise ValueError(f"at most 255 classes are supported, got {len(SCRIPT_CLASSES)}")
    table = np.full(MAX_CODE_POINT + 1, len(SCRIPT_CLASSES) - 1, dtype=np.uint8)
    everything = "".join(map(chr, range(MAX_CODE_POINT + 1)))
    for k, pattern in enumerate(class_patterns()):
        for m in pattern.finditer(everything):
            table[m.start() : m.end()] = k
    table.flags.writeable = False
    return table
