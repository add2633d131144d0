"""semgrpo.script: hand-computed profiles, consistency rules, bad input, backend selection.

Runs on whichever backends are available (the regex path always); test_script_c.py compares the
C path with the regex path on real and generated text.
"""
import warnings

import numpy as np
import pytest

import semgrpo.script as S
from semgrpo.script import SCRIPT_CLASSES, script_consistent, script_profile

BACKENDS = S.available_backends()
K = {name: i for i, name in enumerate(SCRIPT_CLASSES)}


def counts(**kw):
    row = np.zeros(len(SCRIPT_CLASSES), dtype=np.int64)
    for name, n in kw.items():
        row[K[name]] = n
    return row


# (text, expected counts) computed by hand, code point by code point.
HAND = [
    ("", counts()),
    ("བོད་ཡིག།", counts(Tibt=6, punct=2)),  # ba, o, da, ya, i, ga; tsheg and shad are punctuation
    ("༡༢༣ ཀ", counts(digit=3, Tibt=1, space=1)),  # Tibetan digits are digits (neutral)
    ("༄༅། །ཀྲ", counts(punct=4, space=1, Tibt=2)),  # head marks + shad; ka + subjoined ra
    ("ༀ༁༪\u0f48ཱ༘", counts(Tibt=3, other=3)),  # tibetan: om (Lo), vowel sign aa, 0F18 (Mn); other: So, No, unassigned
    ("中文，abc 123!", counts(Hani=2, punct=2, Latn=3, space=1, digit=3)),
    ("㐀\U00020000\U0003134a\uf900", counts(Hani=4)),  # Ext A, Ext B, Ext G, compatibility
    ("Привет, мир", counts(Cyrl=9, punct=1, space=1)),
    ("ひらがなカタカナ한글", counts(Hira=4, Kana=4, Hang=2)),
    ("Ünïcödé ßﬁ", counts(Latn=9, space=1)),  # Latin-1 letters and the fi ligature
    ("\x00\t\n\u3000", counts(other=1, space=3)),
    ("\u0301a\u0301", counts(common_letter=2, Latn=1)),  # combining acute (Inherited) without / with a base
    ("\ud800x\udfff", counts(other=2, Latn=1)),  # lone surrogates
    ("€+😀\ue000\U0010ffff", counts(other=5)),  # symbols, private use, noncharacter
    ("٣٤", counts(digit=2)),  # Arabic-Indic digits
    ("كِتَاب", counts(Arab=4, common_letter=2)),  # kasra and fatha are Inherited marks
    ("ខ្មែរ\u200bភាសា", counts(Khmr=9, other=1)),  # coeng and vowel signs are Khmer marks; ZWSP is a format char
    ("አማርኛ።", counts(Ethi=4, punct=1)),  # Ethiopic syllables, Ethiopic full stop
    ("ᠮᠣᠩᠭᠣᠯ", counts(Mong=6)),
    ("カタカナー", counts(Kana=4, common_letter=1)),  # the prolonged sound mark U+30FC is Common
    ("\U0001d400\u02b9", counts(common_letter=2)),  # mathematical bold A, modifier prime: Common letters
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_profile_hand_computed(backend):
    texts = [t for t, _ in HAND]
    got = script_profile(texts, backend=backend)
    assert got.dtype == np.int64 and got.shape == (len(HAND), len(SCRIPT_CLASSES))
    for i, (text, want) in enumerate(HAND):
        np.testing.assert_array_equal(got[i], want, err_msg=f"text {i}: {text!r}")
    np.testing.assert_array_equal(got.sum(axis=1), [len(t) for t, _ in HAND])


@pytest.mark.parametrize("backend", BACKENDS)
def test_profile_containers(backend):
    want = script_profile(["ཀ", "a"], backend=backend)
    np.testing.assert_array_equal(script_profile(("ཀ", "a"), backend=backend), want)

    class Seq:  # a minimal Sequence that is neither list nor tuple
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return ["ཀ", "a"][i]

    from collections.abc import Sequence

    Sequence.register(Seq)
    np.testing.assert_array_equal(script_profile(Seq(), backend=backend), want)
    assert script_profile([], backend=backend).shape == (0, len(SCRIPT_CLASSES))

    class MyStr(str):
        pass

    np.testing.assert_array_equal(script_profile([MyStr("ཀ"), "a"], backend=backend), want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_consistent_rules(backend):
    texts = [
        "བོད་ཡིག།",  # 0 pure Tibetan with tsheg/shad
        "བོད་ཡིག 123, ༡༢",  # 1 neutral digits/punct/space
        "བོད་ཡིག中",  # 2 one Han letter
        "",  # 3 empty
        "123 ,.!",  # 4 letter-free
        "་།",  # 5 only Tibetan punctuation: neutral, so letter-free
        "中文",  # 6 pure Han
        "abc",  # 7 Latin
        "བོད a b",  # 8 2 foreign among 5 letters
    ]
    got = script_consistent(texts, script="tibetan", backend=backend)
    assert got.dtype == np.bool_ and got.shape == (len(texts),)
    assert got.tolist() == [True, True, False, False, False, False, False, False, False]
    assert script_consistent(texts, script="han", backend=backend).tolist() == [
        False, False, False, False, False, False, True, False, False,
    ]
    assert script_consistent(texts, script="latin", backend=backend)[7]
    # max_foreign / min_ratio: text 8 has 3 Tibetan and 2 Latin letters (ratio 0.6).
    t = ["བོད a b"]
    assert not script_consistent(t, max_foreign=1, min_ratio=0.0, backend=backend)[0]
    assert script_consistent(t, max_foreign=2, min_ratio=0.6, backend=backend)[0]
    assert not script_consistent(t, max_foreign=2, min_ratio=0.61, backend=backend)[0]
    # min_ratio=0 still needs one target letter.
    assert not script_consistent(["abc"], min_ratio=0.0, max_foreign=10, backend=backend)[0]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "bad, index, typename",
    [(["a", None], 1, "NoneType"), ([b"ab"], 0, "bytes"), (["a", "b", 3], 2, "int"), ([["a"]], 0, "list")],
)
def test_bad_items(backend, bad, index, typename):
    with pytest.raises(TypeError, match=rf"texts\[{index}\] must be str, got {typename}"):
        script_profile(bad, backend=backend)
    with pytest.raises(TypeError, match=rf"texts\[{index}\]"):
        script_consistent(bad, backend=backend)


@pytest.mark.parametrize("bad", ["བོད", b"abc", None, 3, {"a": 1}, {"a"}])
def test_bad_container(bad):
    with pytest.raises(TypeError, match="texts must be a list/tuple/sequence of str"):
        script_profile(bad, backend="regex")


def test_bad_options():
    with pytest.raises(ValueError, match=r"unknown script 'klingon'; expected an ISO 15924 code .* Zanb\)"):
        script_consistent(["a"], script="klingon")
    with pytest.raises(ValueError, match=r"unknown script 'Kmer' \(did you mean Khmr, Khmer\?\)"):
        script_consistent(["a"], script="Kmer")
    for neutral in ("Common", "Zinh", "unknown", "Braille"):
        with pytest.raises(ValueError, match=f"script '{neutral}' is no target script"):
            script_consistent(["a"], script=neutral)
    with pytest.raises(ValueError, match="empty part"):
        script_consistent(["a"], script="Hani++Kana")
    with pytest.raises(TypeError, match="script must be a str"):
        script_consistent(["a"], script=3)
    with pytest.raises(ValueError, match="min_ratio must be in"):
        script_consistent(["a"], min_ratio=1.5)
    with pytest.raises(ValueError, match="min_ratio must be in"):
        script_consistent(["a"], min_ratio=float("nan"))
    with pytest.raises(TypeError, match="min_ratio must be a number"):
        script_consistent(["a"], min_ratio="1")
    with pytest.raises(ValueError, match="max_foreign must be >= 0, got -1"):
        script_consistent(["a"], max_foreign=-1)
    with pytest.raises(TypeError, match="max_foreign must be an int"):
        script_consistent(["a"], max_foreign=1.5)
    with pytest.raises(TypeError, match="max_foreign must be an int"):
        script_consistent(["a"], max_foreign=True)
    with pytest.raises(ValueError, match="backend must be one of .*'rust'"):
        script_profile(["a"], backend="rust")


def test_env_var_backend(monkeypatch):
    monkeypatch.setenv(S.ENV_VAR, "regex")
    assert S._resolve_backend(None) == "regex"
    monkeypatch.setenv(S.ENV_VAR, "fortran")
    with pytest.raises(ValueError, match="SEMGRPO_SCRIPT_BACKEND must be one of .*'fortran'"):
        script_profile(["a"])
    assert S._resolve_backend("regex") == "regex"  # the argument wins over the variable


def test_fallback_warns_once(monkeypatch):
    monkeypatch.delenv(S.ENV_VAR, raising=False)
    monkeypatch.setattr(S, "_c", None)
    monkeypatch.setattr(S, "_warned_fallback", False)
    with pytest.raises(ImportError, match="not built"):
        script_profile(["a"], backend="c")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        script_profile(["a"])
        script_profile(["b"])
    assert [w.category for w in caught] == [RuntimeWarning]
    assert "regex" in str(caught[0].message)


def test_class_table_spot_checks():
    """The documented classes of a few code points (the exhaustive comparison is in test_script_ucd.py)."""
    from semgrpo.script.tables import class_table

    table = class_table()
    assert table.shape == (0x110000,) and table.max() == len(SCRIPT_CLASSES) - 1
    assert table[0x0F40] == K["Tibt"] and table[0x0F72] == K["Tibt"] and table[0x0F90] == K["Tibt"]
    assert table[0x0F0B] == K["punct"] and table[0x0F0D] == K["punct"] and table[0x0F04] == K["punct"]
    assert table[0x0F20] == K["digit"] and table[0x0F2A] == K["other"] and table[0x0F48] == K["other"]
    assert table[0x9FFF] == K["Hani"] and table[0x3400] == K["Hani"] and table[0x2F800] == K["Hani"]
    assert table[0x3005] == K["Hani"]  # 々, the ideographic iteration mark: Script=Han, Lm
    assert table[0xFA6E] == K["other"] and table[0x2160] == K["other"]  # unassigned Han position, Roman numeral
    assert table[0xD800] == K["other"] and table[0] == K["other"] and table[0x300] == K["common_letter"]
    assert table[0x17D2] == K["Khmr"] and table[0x17D4] == K["punct"]  # Khmer coeng (Mn), khan (Po)
    assert table[0x064E] == K["common_letter"] and table[0x0627] == K["Arab"]  # fatha (Inherited), alef
    assert table[0x200B] == K["other"] and table[0x200C] == K["other"]  # ZWSP, ZWNJ (Cf)


# ---------------------------------------------------------------- issue #11: letter-free text never passes
# Strings with no letter of any script: marks, punctuation, digits, symbols, spaces, unassigned code
# points. Each must be inconsistent for every script, on every backend (before the fix the whole
# Tibetan block counted as Tibetan letters, so the Tibetan ones earned R_lang = 1).
NEUTRAL_ONLY = [
    "",
    "་",  # tsheg U+0F0B
    "།",  # shad U+0F0D
    "༄༅",  # head marks U+0F04 U+0F05
    "༄༅། །",  # the usual opening of a text, without a word
    "་་་།།།",
    "༼༽༺༻",  # brackets, ang khang
    "༡༢༣༠",  # Tibetan digits U+0F20-0F29
    "༪༳",  # Tibetan half digits (No)
    "༁༂༃༕༗",  # Tibetan symbols (So)
    "\u0f48\u0f6d\u0ffe",  # unassigned positions of the Tibetan block
    "0123456789",
    " ",
    "\t\n \u3000",
    "་ ། ༡ 1 ，。",
    "，。、「」！？",  # CJK punctuation
    "\ufa6e\U0002b81e",  # unassigned positions of Han blocks
    "ⅫⅠⅱ",  # Roman numerals: Script=Latin but numbers (Nl)
    "€+😀\u0301",  # symbols and a combining mark without a base
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("script", ["tibetan", "han", "latin"])
def test_neutral_only_text_is_not_consistent(backend, script):
    got = script_consistent(NEUTRAL_ONLY, script=script, backend=backend)
    passing = [t for t, ok in zip(NEUTRAL_ONLY, got) if ok]
    assert passing == [], f"letter-free texts judged consistent with {script}: {passing!r}"
    # the most lenient options do not open the hole either
    got = script_consistent(NEUTRAL_ONLY, script=script, min_ratio=0.0, max_foreign=100, backend=backend)
    assert not got.any()
    prof = script_profile(NEUTRAL_ONLY, backend=backend)
    from semgrpo.script.tables import LETTER_CLASSES

    assert prof[:, : len(LETTER_CLASSES)].sum() == 0, "a neutral code point landed in a letter class"


# (text, consistent with tibetan): Tibetan with its marks stays consistent; marks never save a text.
TIBETAN_CASES = [
    ("བོད་ཡིག།", True),
    ("༄༅། །བོད་ཡིག་ལ་ཕན་ཐོགས་ཆེན་པོ་ཡོད།", True),
    ("ཀ", True),
    ("ༀ", True),  # the om syllable U+0F00 is a letter (Lo)
    ("བསྒྲུབས", True),  # subjoined letters and vowel signs with letters
    ("ཀ ༡༢༣ 123 ། ，", True),  # one letter, the rest neutral
    ("༄༅། །中", False),  # a Han letter and Tibetan marks only
    ("་།a", False),  # a Latin letter and Tibetan marks only
    ("བོད་ཡིག a", False),  # one foreign letter, max_foreign=0
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_tibetan_marks_neutral(backend):
    texts = [t for t, _ in TIBETAN_CASES]
    got = script_consistent(texts, backend=backend).tolist()
    assert got == [want for _, want in TIBETAN_CASES], list(zip(texts, got))


@pytest.mark.parametrize("backend", BACKENDS)
def test_marks_do_not_count_in_the_ratio(backend):
    """"བོད་ཡིག a": 6 Tibetan letters (tsheg is not one) and 1 Latin letter, ratio 6/7."""
    t = ["བོད་ཡིག a"]
    assert script_consistent(t, min_ratio=6 / 7, max_foreign=1, backend=backend)[0]
    assert not script_consistent(t, min_ratio=6 / 7 + 1e-9, max_foreign=1, backend=backend)[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_other_scripts_need_a_letter_too(backend):
    assert script_consistent(["中文，。", "中"], script="han", backend=backend).tolist() == [True, True]
    assert script_consistent(["Ⅻ", "Ⅻ a"], script="latin", backend=backend).tolist() == [False, True]
    assert script_consistent(["\ufa6e", "\ufa6e中"], script="han", backend=backend).tolist() == [False, True]


def test_tibetan_letters_spelled_out():
    """The Tibetan letters, code point by code point (Unicode 17 general categories)."""
    from semgrpo.script.tables import class_table

    table = class_table()
    tib = {cp for cp in range(0x0F00, 0x1000) if table[cp] == K["Tibt"]}
    spelled = {0x0F00, *range(0x0F40, 0x0F48), *range(0x0F49, 0x0F6D), *range(0x0F88, 0x0F8D),  # Lo
               0x0F18, 0x0F19, 0x0F35, 0x0F37, 0x0F39, 0x0F3E, 0x0F3F, *range(0x0F71, 0x0F85),  # Mn/Mc
               0x0F86, 0x0F87, *range(0x0F8D, 0x0F98), *range(0x0F99, 0x0FBD), 0x0FC6}
    assert tib == spelled
    assert (table == K["Tibt"]).sum() == len(spelled)  # no Tibetan letter outside the block


@pytest.mark.parametrize("backend", BACKENDS)
def test_names_and_aliases_pick_the_same_target(backend):
    texts = ["བོད་ཡིག།", "中文", "ひらがな漢字ー", "ខ្មែរ", "Привет", "ئۇيغۇرچە", "አማርኛ", "a"]
    for same in (["tibetan", "Tibt", "TIBETAN", "tibt"], ["han", "Hani", "Han", "Hans", "Hant"],
                 ["Khmr", "khmer", "Khmer"], ["Arab", "Arabic", "arabic"], ["latin", "Latn"],
                 ["Hani+Hira+Kana", "Jpan", "Kana+Hira+Hani", "han+hiragana+katakana"]):
        got = [script_consistent(texts, script=name, backend=backend).tolist() for name in same]
        assert all(g == got[0] for g in got), (same, got)
    assert script_consistent(texts, script="Jpan", backend=backend).tolist() == [
        False, True, True, False, False, False, False, False]  # ー is Common: neutral, not foreign
    assert script_consistent(texts, script="Arab", backend=backend).tolist()[5]
    assert script_consistent(texts, script="Ethi", backend=backend).tolist()[6]
    assert script_consistent(texts, script="Cyrl", backend=backend).tolist()[4]
    assert S.resolve_script("Jpan") == ("Hani", "Hira", "Kana") and S.resolve_script("Kore") == ("Hang", "Hani")
