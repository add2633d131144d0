"""The demo's tokenizer: a byte-level BPE whose pre-tokenizer keeps each script's units whole.

The pieces of the pre-tokenizer are what BPE merges within, so no token straddles two of them: a Tibetan syllable
(its letters, vowel signs and subjoined letters, without tsheg or shad), one Han character, a run of the letters
and marks of any other script of the demo's languages (a word where the script has spaces, a phrase of
grapheme clusters where it has none: a cluster is never cut), a run of spaces, a Latin word, a number.
"""
from __future__ import annotations

from pathlib import Path

EOS_TOKEN = "<|endoftext|>"

# Characters that make up one Tibetan syllable: letters (incl. U+0F00 om and the U+0F88-0F8C sign letters),
# vowel signs, subjoined letters and combining marks. Tsheg, shad and other punctuation are not in it.
TIBETAN_SYLLABLE_CHARS = (
    "\u0f00\u0f18\u0f19\u0f35\u0f37\u0f39\u0f3e-\u0f47\u0f49-\u0f6c\u0f71-\u0f84\u0f86-\u0f97\u0f99-\u0fbc\u0fc6"
)
_COMMON_PIECES = r"\p{Han}|\s+|\p{Latin}+|\p{N}+"
# Pre-tokenizer: a whole Tibetan syllable | one Han character | a run of spaces | a Latin word | a number.
# Anything else (tsheg, shad, other punctuation) becomes its own piece between the matches.
PRETOKENIZE_PATTERN = rf"[{TIBETAN_SYLLABLE_CHARS}]+|{_COMMON_PIECES}"
# The same with a syllable's trailing tsheg (U+0F0B) in its piece: about half the tokens on Tibetan text.
SYLLABLE_TSHEG_PATTERN = rf"[{TIBETAN_SYLLABLE_CHARS}]+\u0f0b?|{_COMMON_PIECES}"


def pretokenize_pattern(scripts: tuple[str, ...]) -> str:
    """The pre-tokenizer regex (Oniguruma syntax, as `tokenizers` reads it) for text in these UCD scripts.

    Tibetan gets whole syllables, Han single characters, Latin words and numbers always have their pieces; any
    other script a run of its letters and marks with the Inherited marks and the zero-width (non-)joiners
    inside its words. For ``("Hani", "Tibt")`` this is `PRETOKENIZE_PATTERN`.
    """
    from semgrpo.script.tables import SCRIPT_NAMES

    parts = [f"[{TIBETAN_SYLLABLE_CHARS}]+"] if "Tibt" in scripts else []
    for code in sorted(set(scripts) - {"Tibt", "Hani", "Latn"}):
        parts.append(rf"(?:[[\p{{L}}\p{{M}}]&&[\p{{{SCRIPT_NAMES[code]}}}\p{{Inherited}}]]|[\u200c\u200d])+")
    return "|".join(parts + [_COMMON_PIECES])


def build_tokenizer(texts: list[str], output_dir: str | Path, *, vocab_size: int = 1536,
                    pattern: str = PRETOKENIZE_PATTERN):
    """Train a byte-level BPE on ``texts`` and save it as a ``PreTrainedTokenizerFast`` directory.

    The pre-tokenizer (``pattern``, by default the Tibetan/Chinese one) keeps a Tibetan syllable whole (letters,
    vowel signs, subjoined letters), isolates tsheg/shad and spaces, and splits Chinese per character; BPE merges
    never cross those pieces. Bytes come after the split, so any text encodes without an unknown token.
    ``<|endoftext|>`` is eos and pad.

    Args:
        texts: Training corpus.
        output_dir: Where to save.
        vocab_size: Upper bound of the vocabulary (the small demo corpus may give fewer merges).
        pattern: Pre-tokenizer regex; its matches and the text between them are the pieces BPE merges
            within (``SYLLABLE_TSHEG_PATTERN`` lets a syllable and its tsheg become one token).

    Returns:
        The saved ``PreTrainedTokenizerFast``.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 300:
        raise ValueError(f"vocab_size must be >= 300 (256 bytes + specials + merges), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN, model_max_length=512
    )
    fast.save_pretrained(str(output_dir))
    return fast
