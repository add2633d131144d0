"""Script profile and language consistency of texts (the R_lang reward, paper section 3.4.2).

Two backends give identical answers for every input:

- ``"c"``: the C extension `semgrpo._script_check` (csrc/script_check.c). It reads each str's own
  PEP 393 storage (1, 2 or 4 bytes per code point) without encoding it, looks every code point up
  in `semgrpo.script.tables.class_table()` and counts, over the whole batch, with the GIL released.
- ``"regex"``: pure Python with the `regex` module's Unicode sets (`semgrpo.script.tables`).

The default is ``"c"`` when the extension is built and ``"regex"`` otherwise (with a warning,
once). The environment variable ``SEMGRPO_SCRIPT_BACKEND=c|regex`` or the keyword ``backend=``
(which wins) forces one; forcing ``"c"`` without the extension raises ImportError.

What counts (issues #11 and #29; details in `semgrpo.script.tables`): only letters decide, for every
script of the Unicode Character Database (Unicode 17.0.0). A letter of a script is a code point of that
script (Scripts.txt) whose general category is L* or M*: for Tibetan, the consonants, the om syllable,
the vowel signs and the subjoined consonants. Common and Inherited letters and marks, digits, spaces,
punctuation (tsheg, shad and the head marks among it) and symbols are neutral: they never make a text
consistent and never make it inconsistent. A text with no letter of the target script (empty, only
marks, only digits...) is never consistent. Scripts are named by ISO 15924 code or Unicode name
(`semgrpo.script.names`): ``"Tibt"``, ``"Tibetan"``, ``"tibetan"``, ``"Arab"``, ``"Hani+Hira+Kana"``.

Defined answers for unusual input (never a crash): lone surrogates, NUL and other controls,
unassigned code points and combining marks of no script are counted as ``other`` or
``common_letter`` (neutral); a combining mark of a script (a Tibetan vowel sign) counts for that
script even without a base letter. Strings of any length are counted
(counts are int64). Anything that is not a str (None, bytes, numbers...) raises TypeError naming
the index and the type; str subclasses are accepted as str.
"""
from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence

import numpy as np

from semgrpo.script.names import resolve_script
from semgrpo.script.tables import (
    FOREIGN,
    SCRIPT_CLASSES,
    SCRIPTS,
    TARGET,
    UNICODE_VERSION,
    class_patterns,
    class_table,
    consistency_patterns,
    consistency_table,
)

__all__ = ["SCRIPT_CLASSES", "SCRIPTS", "UNICODE_VERSION", "script_profile", "script_consistent",
           "resolve_script", "available_backends"]

BACKENDS = ("c", "regex")
ENV_VAR = "SEMGRPO_SCRIPT_BACKEND"

try:
    from semgrpo import _script_check as _c
except ImportError:  # the extension is optional: setup.py builds it when it can
    _c = None

_warned_fallback = False


def available_backends() -> tuple[str, ...]:
    """Backends usable in this installation, best first."""
    return BACKENDS if _c is not None else ("regex",)


def _resolve_backend(backend: str | None) -> str:
    """Pick the backend: the argument, else the environment variable, else the best available."""
    global _warned_fallback
    source = "backend"
    if backend is None:
        backend = os.environ.get(ENV_VAR) or None
        source = ENV_VAR
    if backend is not None:
        if backend not in BACKENDS:
            raise ValueError(f"{source} must be one of {BACKENDS}, got {backend!r}")
        if backend == "c" and _c is None:
            raise ImportError(
                f"{source}='c' but the C extension semgrpo._script_check is not built; "
                "run `python setup.py build_ext --inplace` or use backend='regex'"
            )
        return backend
    if _c is not None:
        return "c"
    if not _warned_fallback:
        _warned_fallback = True
        warnings.warn(
            "semgrpo._script_check (C extension) is not built; using the slower pure-Python "
            "`regex` script checker (same answers)",
            RuntimeWarning,
            stacklevel=3,
        )
    return "regex"


def _as_text_list(texts: object) -> list | tuple:
    """Validate the container (not its items): a list/tuple/sequence of str, never a bare str."""
    if isinstance(texts, (list, tuple)):
        return texts
    if isinstance(texts, (str, bytes, bytearray, memoryview)):
        raise TypeError(
            f"texts must be a list/tuple/sequence of str, got a single {type(texts).__name__}; "
            "wrap it in a list"
        )
    if isinstance(texts, Sequence):
        return list(texts)
    raise TypeError(f"texts must be a list/tuple/sequence of str, got {type(texts).__name__}")


def _profile_regex(texts: list | tuple, out: np.ndarray, patterns: tuple) -> None:
    """Fill ``out[i, k]`` with the number of code points of ``texts[i]`` matched by ``patterns[k]``;
    the last column gets the rest."""
    last = out.shape[1] - 1
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be str, got {type(text).__name__}")
        row = out[i]
        seen = 0
        for k, pattern in enumerate(patterns):
            n = sum(map(len, pattern.findall(text)))
            row[k] = n
            seen += n
        row[last] = len(text) - seen


def _count(texts, backend: str | None, table, patterns, nclasses: int) -> np.ndarray:
    """[len(texts), nclasses] counts by `table` (C path) or by `patterns` (regex path)."""
    chosen = _resolve_backend(backend)
    texts = _as_text_list(texts)
    out = np.zeros((len(texts), nclasses), dtype=np.int64)
    if len(texts) == 0:
        return out
    if chosen == "c":
        _c.profile(texts, table(), nclasses, out)
    else:
        _profile_regex(texts, out, patterns())
    return out


def script_profile(texts: Sequence[str], *, backend: str | None = None) -> np.ndarray:
    """Count the code points of each text per character class.

    Args:
        texts: List, tuple or other sequence of str (a bare str is rejected).
        backend: ``"c"``, ``"regex"`` or None (environment variable, else the best available).

    Returns:
        int64 array; ``out[i, k]`` is the number of code points of ``texts[i]`` in class
        ``SCRIPT_CLASSES[k]``. Each row sums to ``len(texts[i])``.

    Shape:
        texts: [n] -> out: [n, len(SCRIPT_CLASSES)]

    Raises:
        TypeError: ``texts`` is not a sequence of str (the message names the bad index and type).
        ValueError: unknown backend.
        ImportError: backend ``"c"`` requested but not built.
    """
    return _count(texts, backend, class_table, class_patterns, len(SCRIPT_CLASSES))


def script_consistent(
    texts: Sequence[str],
    *,
    script: str = "tibetan",
    min_ratio: float = 1.0,
    max_foreign: int = 0,
    backend: str | None = None,
) -> np.ndarray:
    """Decide, per text, whether it is written in ``script`` and not mixed (R_lang).

    A text is consistent when all three hold, counting letters only (L* or M* of a script; see
    `semgrpo.script.tables`). Spaces, digits, punctuation and symbols are neutral, those of the Tibetan
    block included (tsheg, shad, head marks such as ``༄༅``, Tibetan digits), and so are the letters and
    marks of Common and Inherited (U+0301, the Arabic harakat, the prolonged sound mark ー): they count
    neither for nor against.

    - it has at least one letter of ``script`` (empty or letter-free text, e.g. ``"་།"`` or
      ``"༄༅ ༡༢"``, is not consistent);
    - ``target / letters >= min_ratio``;
    - ``letters - target <= max_foreign`` (letters of any other script).

    Args:
        texts: List, tuple or other sequence of str.
        script: Target: an ISO 15924 code or Unicode name (``"Tibt"``, ``"tibetan"``, ``"Arab"``,
            ``"Khmer"``), or several joined by ``+`` whose letters all count (``"Hani+Hira+Kana"``);
            see `semgrpo.script.names`.
        min_ratio: Minimum fraction of target-script letters among all letters, in [0, 1].
        max_foreign: Maximum number of letters from other scripts, an int >= 0.
        backend: ``"c"``, ``"regex"`` or None, as in `script_profile`.

    Returns:
        bool array, True where the text is consistent.

    Shape:
        texts: [n] -> out: [n]

    Raises:
        TypeError: bad ``texts`` (index and type named), non-numeric options.
        ValueError: unknown script or backend, option out of range.
    """
    codes = resolve_script(script)
    if isinstance(min_ratio, bool) or not isinstance(min_ratio, (int, float, np.integer, np.floating)):
        raise TypeError(f"min_ratio must be a number in [0, 1], got {type(min_ratio).__name__}")
    if not (math.isfinite(min_ratio) and 0.0 <= min_ratio <= 1.0):
        raise ValueError(f"min_ratio must be in [0, 1], got {min_ratio!r}")
    if isinstance(max_foreign, bool) or not isinstance(max_foreign, (int, np.integer)):
        raise TypeError(f"max_foreign must be an int >= 0, got {type(max_foreign).__name__}")
    if max_foreign < 0:
        raise ValueError(f"max_foreign must be >= 0, got {max_foreign!r}")
    counts = _count(texts, backend, lambda: consistency_table(codes), lambda: consistency_patterns(codes), 3)
    target, foreign = counts[:, TARGET], counts[:, FOREIGN]
    letters = target + foreign
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(letters > 0, target / np.maximum(letters, 1), 0.0)
    return (target > 0) & (ratio >= float(min_ratio)) & (foreign <= int(max_foreign))
