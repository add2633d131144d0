"""Text units shared by rewards and metrics."""
from __future__ import annotations

import regex

# Tibetan syllables are delimited by tsheg (U+0F0B, U+0F0C non-breaking), shad and its variants
# (U+0F0D-U+0F12, U+0F14), and whitespace; the delimiters themselves are not tokens.
_TIBETAN_DELIMITERS = regex.compile(r"[\u0F0B\u0F0C\u0F0D-\u0F12\u0F14\s]+")


def tibetan_syllables(text: str) -> list[str]:
    """Split Tibetan text into syllables (the word-like unit BLEU/ROUGE count for Tibetan)."""
    return [s for s in _TIBETAN_DELIMITERS.split(text) if s]
