"""Every Unicode script, every code point (issue #29): the generated UCD tables and the C extension
against the `regex` module's own Unicode tables, plus real CLDR strings of other scripts.

The `regex` side classifies all 0x110000 code points once with its ``\\p{Script=...}``, ``\\p{L}``,
``\\p{M}``... (`class_patterns`); each class becomes one string of all its code points, and one C call
counts them all: an exact diagonal means the C extension agrees with `regex` on every code point.
"""
import numpy as np
import pytest

import semgrpo.script as S
from semgrpo.script import SCRIPT_CLASSES, SCRIPTS, script_consistent, script_profile
from semgrpo.script.tables import (
    FOREIGN,
    NEUTRAL,
    SCRIPT_NAMES,
    TARGET,
    UNICODE_VERSION,
    class_patterns,
    class_table,
    consistency_patterns,
    consistency_table,
)

needs_c = pytest.mark.skipif(S._c is None, reason="C extension semgrpo._script_check not built")


@pytest.fixture(scope="module")
def regex_classes():
    """The class of every code point as the `regex` path defines it (uint8 [0x110000])."""
    everything = "".join(map(chr, range(0x110000)))
    out = np.full(0x110000, len(SCRIPT_CLASSES) - 1, dtype=np.uint8)
    for k, pattern in enumerate(class_patterns()):
        for m in pattern.finditer(everything):
            out[m.start() : m.end()] = k
    return out


@pytest.fixture(scope="module")
def class_strings(regex_classes):
    """One string per class, holding every code point the `regex` path puts in it (lone surrogates too)."""
    return ["".join(map(chr, np.flatnonzero(regex_classes == k))) for k in range(len(SCRIPT_CLASSES))]


def _name(k: int) -> str:
    return SCRIPT_CLASSES[k] if k < len(SCRIPT_CLASSES) else f"#{k}"


def test_unicode_version_and_scripts():
    assert UNICODE_VERSION == "17.0.0"  # the version the pinned regex module implements (its README says so)
    assert len(SCRIPTS) == 171 and len(SCRIPT_CLASSES) == 176 and tuple(sorted(SCRIPTS)) == SCRIPTS
    assert SCRIPT_NAMES["Tibt"] == "Tibetan" and SCRIPT_NAMES["Ethi"] == "Ethiopic" and SCRIPT_NAMES["Mong"] == "Mongolian"
    assert not {"Zyyy", "Zinh", "Zzzz", "Brai", "Hrkt"} & set(SCRIPTS)  # neutral, or without a letter


def test_generated_tables_equal_regex_on_every_code_point(regex_classes):
    table = class_table()
    diff = np.flatnonzero(table != regex_classes)
    detail = [f"U+{cp:04X}: tables {_name(table[cp])}, regex {_name(regex_classes[cp])}" for cp in diff[:10]]
    assert diff.size == 0, f"{diff.size} code points differ: {detail}"
    # every script has letters, and every class is used
    assert np.bincount(table, minlength=len(SCRIPT_CLASSES)).min() > 0


@needs_c
def test_c_profile_agrees_with_regex_on_every_code_point(class_strings):
    assert sum(map(len, class_strings)) == 0x110000
    got = script_profile(class_strings, backend="c")
    np.testing.assert_array_equal(got, np.diag([len(s) for s in class_strings]))


@needs_c
def test_c_consistency_agrees_with_regex_for_every_script_on_every_code_point(class_strings):
    """For each script as the target, every code point is target, foreign or neutral alike on both paths."""
    n = len(class_strings)
    sizes = np.array([len(s) for s in class_strings])
    for k, code in enumerate(SCRIPTS):
        want = np.zeros((n, 3), dtype=np.int64)
        want[: len(SCRIPTS), FOREIGN] = sizes[: len(SCRIPTS)]
        want[len(SCRIPTS) :, NEUTRAL] = sizes[len(SCRIPTS) :]
        want[k] = [sizes[k], 0, 0]
        c = S._count(class_strings, "c", lambda: consistency_table((code,)), None, 3)
        r = S._count(class_strings, "regex", None, lambda: consistency_patterns((code,)), 3)
        np.testing.assert_array_equal(c, want, err_msg=f"C path, target {code}")
        np.testing.assert_array_equal(r, want, err_msg=f"regex path, target {code}")
    assert TARGET == 0


# Real text of other scripts: CLDR names (territories, languages, months, days) as babel ships them. CLDR
# keeps a handful of Latin names in them ("Pseudo-Accents", "Hinglish", "疑似 BIDI"): mixed, so not consistent.
CLDR_SCRIPTS = {"ug": "Arab", "am": "Ethi", "km": "Khmr", "mn": "Cyrl", "si": "Sinh", "lo": "Laoo", "my": "Mymr",
                "ii": "Yiii", "ka": "Geor", "hy": "Armn", "el": "Grek", "he": "Hebr", "th": "Thai", "hi": "Deva",
                "ja": "Hani+Hira+Kana", "ko": "Kore", "dz": "Tibt"}


def _cldr_names(code):
    from babel import Locale

    loc = Locale.parse(code)
    maps = [loc.territories, loc.languages, dict(loc.months["format"]["wide"]), dict(loc.days["format"]["wide"])]
    return [v for m in maps for k, v in m.items() if isinstance(v, str) and v != str(k)]


@pytest.mark.parametrize("lang", sorted(CLDR_SCRIPTS))
def test_cldr_strings_of_other_scripts(lang):
    names = _cldr_names(lang)
    script = CLDR_SCRIPTS[lang]
    assert len(names) >= 50
    backends = S.available_backends()
    profiles = [script_profile(names, backend=b) for b in backends]
    verdicts = [script_consistent(names, script=script, backend=b) for b in backends]
    for p, v in zip(profiles[1:], verdicts[1:]):
        np.testing.assert_array_equal(p, profiles[0])
        np.testing.assert_array_equal(v, verdicts[0])
    failing = [n for n, ok in zip(names, verdicts[0]) if not ok]
    assert verdicts[0].mean() >= 0.99, failing[:10]
    assert all(script_profile(failing)[:, SCRIPT_CLASSES.index("Latn")] > 0), failing  # the Latin leftovers
