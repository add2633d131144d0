"""Text units shared by rewards and metrics: the "words" of each script.

Three kinds of unit (`unit_kind`), by how a script separates its words:

- ``"syllable"``: Tibetan (``Tibt``), which separates syllables with tsheg and has no word spaces;
- ``"character"``: scripts written without spaces between words (`CHARACTER_SCRIPTS`: Han, kana, Thai, Lao,
  Khmer, Myanmar, Yi...): each character (a grapheme cluster: a consonant with its vowel signs and
  subscripts is one unit) of these scripts is a unit, and a run of other non-space characters (a Latin
  word, a number) is one unit;
- ``"word"``: every other script (Latin, Cyrillic, Arabic, Ethiopic, Mongolian, Sinhala, Hangul...):
  runs of letters, marks and digits between spaces and punctuation.
"""
from __future__ import annotations

import regex

from semgrpo.script.names import resolve_script

# Tibetan syllables are delimited by tsheg (U+0F0B, U+0F0C non-breaking), shad and its variants
# (U+0F0D-U+0F12, U+0F14), and whitespace; the delimiters themselves are not tokens.
_TIBETAN_DELIMITERS = regex.compile(r"[\u0F0B\u0F0C\u0F0D-\u0F12\u0F14\s]+")

SYLLABLE_SCRIPTS = ("Tibt",)
# Scripts written without spaces between words (scriptio continua): Balinese, Bopomofo, Han, Hiragana,
# Javanese, Katakana, Khmer, Tai Tham, Lao, Myanmar, New Tai Lue, Thai, Yi.
CHARACTER_SCRIPTS = ("Bali", "Bopo", "Hani", "Hira", "Java", "Kana", "Khmr", "Lana", "Laoo", "Mymr", "Talu",
                     "Thai", "Yiii")
UNIT_KINDS = ("syllable", "character", "word")


def tibetan_syllables(text: str) -> list[str]:
    """Split Tibetan text into syllables (the word-like unit BLEU/ROUGE count for Tibetan)."""
    return [s for s in _TIBETAN_DELIMITERS.split(text) if s]


def unit_kind(script) -> str:
    """``"syllable"``, ``"character"`` or ``"word"`` for a target (anything `resolve_script` takes).

    A target of several scripts counts syllables when one of them is Tibetan, characters when all of them are
    written without spaces (Japanese: ``Hani+Hira+Kana``), else words (Korean: ``Hang+Hani``).
    """
    codes = resolve_script(script)
    if any(c in SYLLABLE_SCRIPTS for c in codes):
        return "syllable"
    if all(c in CHARACTER_SCRIPTS for c in codes):
        return "character"
    return "word"


_CHARACTER_LETTER = "[[" + "".join(rf"\p{{Script={c}}}" for c in CHARACTER_SCRIPTS) + r"]&&[\p{L}\p{M}]]"
# A grapheme cluster that starts with a letter of a character script, or a run of other non-space characters.
_CHARACTER_UNIT = regex.compile(rf"(?={_CHARACTER_LETTER})\X|(?:(?!{_CHARACTER_LETTER})\S)+", flags=regex.V1)
# A word: letters, marks and digits, with the zero-width (non-)joiners that Persian and Indic words hold.
_WORD = regex.compile(r"[\p{L}\p{M}\p{N}\u200c\u200d]+")


def character_units(text: str) -> list[str]:
    """Units of a script without word spaces: each character of `CHARACTER_SCRIPTS` (a grapheme cluster) alone,
    each run of other non-space characters whole (``"ភាសា ខ្មែរ 42"`` -> ``["ភា", "សា", "ខ្មែ", "រ", "42"]``)."""
    return _CHARACTER_UNIT.findall(text)


def word_units(text: str) -> list[str]:
    """Words of a script with spaces: lower-cased runs of letters, marks and digits (punctuation dropped)."""
    return _WORD.findall(text.lower())


def text_units(text: str, script) -> list[str]:
    """The units of `unit_kind(script)` in `text`."""
    kind = unit_kind(script)
    if kind == "syllable":
        return tibetan_syllables(text)
    return character_units(text) if kind == "character" else word_units(text)
