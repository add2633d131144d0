"""Character classes of the script checker: the one table to edit to add a script.

Every code point U+0000..U+10FFFF falls in exactly one class of `SCRIPT_CLASSES`. The classes
are defined by the `regex` module's Unicode character sets below, made disjoint by priority (a
code point belongs to the first class whose set contains it). Both backends of `semgrpo.script`
read these definitions: the `regex` path matches the patterns directly, and the C path looks code
points up in a flat table (`class_table()`) built from the same patterns, so the two agree by
construction on every code point and the tests check that they agree on every string.

To add a low-resource script, add one entry to `SCRIPTS` (for example
``"mongolian": r"\\u1800-\\u18AF\\U00011660-\\U0001167F"``); it becomes a letter class and a valid
``script=`` for `semgrpo.script.script_consistent`. Nothing else changes, the C extension included:
the set may name whole blocks, because only its letters and combining marks enter the class.

The rule (issue #11): only *letters* decide whether a text is in a script. The letters of script S are
the code points of ``SCRIPTS[S]`` whose Unicode general category is L* (letter) or M* (combining mark:
vowel signs, subjoined consonants and the like), as the installed `regex` module knows them (its
Unicode version; both backends read the same table). Everything else in the set (punctuation, digits,
symbols, unassigned positions) is neutral: it falls through to the classes below like any other such
code point. A text made only of neutral code points has no letter of any script, so it is consistent with
none.

Classes, in priority order:

- one class per entry of `SCRIPTS` (the letters of that script, as defined above):
  - ``tibetan``: the letters of the Tibetan block U+0F00-U+0FFF. Category L*: U+0F00 (the om
    syllable), U+0F40-0F47, 0F49-0F6C (consonants), U+0F88-0F8C (head letters). Category M*: the
    vowel signs and other syllable signs U+0F71-0F84, the subjoined consonants U+0F8D-0F97 and
    0F99-0FBC, and the combining signs U+0F18-0F19, 0F35, 0F37, 0F39, 0F3E-0F3F, 0F86-0F87, 0FC6.
    Neutral, hence never Tibetan and never foreign: the head marks U+0F01-0F17 (U+0F04-0F05 among
    them), tsheg U+0F0B, shad U+0F0D and the rest of the punctuation (``punct``), the digits
    U+0F20-0F29 (``digit``), the half digits U+0F2A-0F33, the symbols, and unassigned positions
    such as U+0F48 (``other``).
  - ``han``: the ideographs (all of category Lo) of the CJK Unified Ideographs block, its extensions
    A-J and the CJK Compatibility Ideographs blocks; their unassigned positions are ``other``.
  - ``latin``: letters and marks of Unicode ``Script=Latin``; the Roman numerals U+2160-2188
    (category Nl) are ``other``.
- ``other_letter``: any other letter (``\\p{L}``): Cyrillic, kana, Hangul, Arabic...
- ``digit``: decimal digits (``\\p{Nd}``), ASCII, Tibetan and others.
- ``space``: white space (``\\p{White_Space}``).
- ``punct``: punctuation (``\\p{P}``), e.g. ``, . ! ， 。 「」`` and tsheg/shad/head marks.
- ``other``: everything else: symbols, numbers other than decimal digits, combining marks outside
  the script classes, controls (NUL included), format characters, private use, unassigned code
  points and lone surrogates.

The letter classes (the scripts plus ``other_letter``) are the ones that decide consistency; the
rest are neutral. Combining marks count as letters only inside a script class (a Tibetan vowel sign
is Tibetan); elsewhere (U+0301, a Devanagari vowel sign) they are ``other``, neutral.
"""
from __future__ import annotations

import functools

import numpy as np
import regex

# Script letter classes: name -> contents of a regex V1 character set (what goes between [ ]).
# Edit this table to add a script; keep the names lower-case identifiers. Only the letters and
# combining marks of each set (`_SCRIPT_LETTERS`) enter its class; the rest of it is neutral.
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

# What a script class keeps of its set: letters (L*) and combining marks (M*).
_SCRIPT_LETTERS = r"[\p{L}\p{M}]"

SCRIPT_CLASSES: tuple[str, ...] = tuple(SCRIPTS) + tuple(_TRAILING)
"""Class names, in the column order of `semgrpo.script.script_profile`."""

LETTER_CLASSES: tuple[str, ...] = tuple(SCRIPTS) + ("other_letter",)
"""Classes that count as letters for consistency (the first ``len(LETTER_CLASSES)`` columns)."""

MAX_CODE_POINT = 0x10FFFF


def _class_sets() -> list[str]:
    """Regex V1 set expressions, one per class except ``other``, made disjoint by priority."""
    sets = []
    earlier: list[str] = []
    bodies = [f"[[{body}]&&{_SCRIPT_LETTERS}]" for body in SCRIPTS.values()]
    bodies += [f"[{body}]" for body in _TRAILING.values() if body is not None]
    for body in bodies:
        expr = body
        if earlier:
            expr = "[" + expr + "--[" + "".join(earlier) + "]]"
        sets.append(expr)
        earlier.append(body)
    return sets


@functools.cache
def class_patterns() -> tuple[regex.Pattern, ...]:
    """Compiled run patterns (``[set]+``), one per class except the last (``other``).

    Returns:
        Tuple of ``len(SCRIPT_CLASSES) - 1`` compiled `regex` patterns; pattern ``k`` matches
        maximal runs of class ``k``. Code points matched by none of them are ``other``.
    """
    return tuple(regex.compile(s + "+", flags=regex.V1) for s in _class_sets())


@functools.cache
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
