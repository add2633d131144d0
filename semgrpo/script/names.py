"""Script names: what `script=` and `reward.script` accept, and how they become sets of UCD scripts.

A target is one script or several joined by ``+`` (``Hani+Hira+Kana`` for Japanese). Each part is, compared
loosely (case, spaces, ``_`` and ``-`` ignored, as UAX #44 matches property values):

- an ISO 15924 code or the Unicode name of a script of `semgrpo.script.ucd` (``Arab`` or ``Arabic``,
  ``Tibt`` or ``Tibetan``, ``Hani`` or ``Han``); so today's names ``tibetan``, ``han`` and ``latin`` keep working;
- an ISO 15924 code that stands for a variant or a mix of UCD scripts (`ISO_MIXES`): ``Hans`` and ``Hant``
  are Han, ``Jpan`` is Han + Hiragana + Katakana, ``Kore`` is Hangul + Han.

Common (``Zyyy``), Inherited (``Zinh``) and Unknown (``Zzzz``) are no target: their letters are neutral. Braille
(``Brai``) has no letter at all (its patterns are symbols), so no text could ever be written in it.
"""
from __future__ import annotations

import difflib
import functools
import re

from semgrpo.script.ucd import SCRIPT_NAMES

# ISO 15924 codes of variants and mixes, as UCD scripts (the codes babel's CLDR data uses among them).
ISO_MIXES: dict[str, tuple[str, ...]] = {
    "Hans": ("Hani",),  # Han, simplified
    "Hant": ("Hani",),  # Han, traditional
    "Hanb": ("Bopo", "Hani"),  # Han with Bopomofo
    "Jpan": ("Hani", "Hira", "Kana"),  # Japanese
    "Kore": ("Hang", "Hani"),  # Korean
    "Hrkt": ("Hira", "Kana"),  # Japanese syllabaries
    "Aran": ("Arab",),  # Arabic, Nastaliq style
}
# UCD Script values that are not a target, and why.
NOT_A_TARGET = {
    "Zyyy": "Common letters are neutral (shared by many scripts)",
    "Zinh": "Inherited marks are neutral (they take the script of their base letter)",
    "Zzzz": "Unknown is the value of unassigned code points",
    "Brai": "Braille has no letters (its patterns are symbols), so no text is ever written in it",
}
_NOT_A_TARGET_NAMES = {"Zyyy": "Common", "Zinh": "Inherited", "Zzzz": "Unknown", "Brai": "Braille"}


def _loose(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name).lower()


@functools.cache
def _lookup() -> dict[str, tuple[str, ...]]:
    """Loose spelling -> the UCD scripts it names (codes and names of every script, then the ISO mixes)."""
    table: dict[str, tuple[str, ...]] = {}
    for code, name in SCRIPT_NAMES.items():
        for spelling in (code, name):
            key = _loose(spelling)
            if table.get(key, (code,)) != (code,):
                raise RuntimeError(f"script spelling {spelling!r} names two scripts")  # a UCD change to look at
            table[key] = (code,)
    for code, parts in ISO_MIXES.items():
        table.setdefault(_loose(code), parts)
    return table


def script_choices() -> str:
    """The valid names, compactly: every ISO 15924 code, then the mixes (for error messages and help)."""
    return (f"an ISO 15924 code or Unicode name of one of {len(SCRIPT_NAMES)} scripts ("
            + " ".join(SCRIPT_NAMES) + "), a mix (" + " ".join(ISO_MIXES) + "), or several joined by '+'")


def resolve_script(spec: str | tuple[str, ...] | list[str] | frozenset) -> tuple[str, ...]:
    """The sorted ISO 15924 codes of the UCD scripts a target names.

    Args:
        spec: ``"Khmr"``, ``"khmer"``, ``"tibetan"``, ``"Hani+Hira+Kana"``, ``"Jpan"``, or a sequence of such.

    Returns:
        Sorted, distinct codes of `semgrpo.script.ucd.SCRIPT_NAMES`, e.g. ``("Hani", "Hira", "Kana")``.

    Raises:
        TypeError: not a str or a sequence of str.
        ValueError: an empty or unknown part (the message lists the valid names and a close match).
    """
    parts = spec.split("+") if isinstance(spec, str) else spec
    if not isinstance(parts, (list, tuple, frozenset, set)) or not all(isinstance(p, str) for p in parts):
        raise TypeError(f"script must be a str such as 'Tibt' or 'Hani+Hira+Kana', got {spec!r}")
    table, codes = _lookup(), set()
    for part in parts:
        key = _loose(part)
        if key in table:
            codes.update(table[key])
            continue
        neutral = next((c for c, n in _NOT_A_TARGET_NAMES.items() if key in (_loose(c), _loose(n))), None)
        if neutral is not None:
            raise ValueError(f"script {part!r} is no target script: {NOT_A_TARGET[neutral]}")
        if not key:
            raise ValueError(f"script {spec!r} has an empty part; expected {script_choices()}")
        close = difflib.get_close_matches(key, list(table), n=1, cutoff=0.75)
        hint = ""
        if close:
            code = "+".join(table[close[0]])
            hint = f" (did you mean {code}, {'+'.join(SCRIPT_NAMES.get(c, c) for c in table[close[0]])}?)"
        raise ValueError(f"unknown script {part!r}{hint}; expected {script_choices()}")
    if not codes:
        raise ValueError(f"script {spec!r} names no script; expected {script_choices()}")
    return tuple(sorted(codes))


def script_label(codes: tuple[str, ...]) -> str:
    """``"Hani+Hira+Kana"``: the canonical spelling of a resolved target."""
    return "+".join(codes)
