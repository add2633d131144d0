"""The C path of semgrpo.script against its regex path: real data, generated strings, bad input,
threads and leaks. Skips (with the reason) when the C extension is not built."""
import contextlib
import gc
import json
import resource
import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import semgrpo.script as S
from semgrpo.script import SCRIPT_CLASSES, script_consistent, script_profile
from semgrpo.script.tables import class_table

pytestmark = pytest.mark.skipif(
    S._c is None, reason="C extension semgrpo._script_check not built (python setup.py build_ext --inplace)"
)
N = len(SCRIPT_CLASSES)


def both(texts):
    c = script_profile(texts, backend="c")
    r = script_profile(texts, backend="regex")
    np.testing.assert_array_equal(c, r)
    np.testing.assert_array_equal(c.sum(axis=1), [len(t) for t in texts])
    return c


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def _real_texts(root):
    texts = []
    for path in sorted(root.rglob("*.jsonl")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                texts.extend(_strings(json.loads(line)))
    for path in sorted(root.rglob("*.json")):
        texts.extend(_strings(json.loads(path.read_text(encoding="utf-8"))))  # CMRC: contexts, questions, answers
    assert len(texts) > 10000, f"expected the real datasets to hold >10k strings, found {len(texts)}"
    return texts


def test_real_data_c_equals_regex(real_data_root):
    texts = _real_texts(real_data_root)
    prof = both(texts)
    assert prof[:, SCRIPT_CLASSES.index("Tibt")].sum() > 700_000  # letters only: tsheg/shad are punct
    assert prof[:, SCRIPT_CLASSES.index("Hani")].sum() > 500_000
    for script in ("tibetan", "han", "latin"):
        for kw in ({}, {"min_ratio": 0.8, "max_foreign": 3}):
            c = script_consistent(texts, script=script, backend="c", **kw)
            r = script_consistent(texts, script=script, backend="regex", **kw)
            np.testing.assert_array_equal(c, r)


code_points = st.integers(min_value=0, max_value=0x10FFFF)
ascii_points = st.integers(min_value=0, max_value=0x7F)
bmp_points = st.integers(min_value=0, max_value=0xFFFF)
# Neutral code points (no letter of any script), listed by hand rather than read from the table:
# Tibetan marks, punctuation, digits, symbols and unassigned positions; ASCII and CJK punctuation,
# digits and spaces; Roman numerals (Script=Latin, category Nl); unassigned Han positions; symbols.
NEUTRAL_POINTS = sorted(
    {*range(0x0F01, 0x0F18), *range(0x0F1A, 0x0F35), 0x0F36, 0x0F38, *range(0x0F3A, 0x0F3E), 0x0F48,
     *range(0x0F6D, 0x0F71), 0x0F85, 0x0F98, *range(0x0FBD, 0x0FC6), *range(0x0FC7, 0x1000)}
    | {*range(0x20, 0x41), *range(0x5B, 0x61), *range(0x7B, 0x7F), 0x09, 0x0A, 0x3000, 0x3001, 0x3002,
       0x300C, 0x300D, 0xFF0C, 0xFF01, 0xFF1F, *range(0x2160, 0x2183), 0xFA6E, 0x2B81E, 0x20AC, 0x1F600}
)
neutral_points = st.sampled_from(NEUTRAL_POINTS)
neutral_text = st.lists(neutral_points, max_size=200).map(lambda cps: "".join(map(chr, cps)))
text = st.one_of(
    st.lists(code_points, max_size=300),
    st.lists(ascii_points, max_size=300),
    st.lists(st.integers(min_value=0, max_value=0xFF), max_size=300),  # UCS1 storage
    st.lists(bmp_points, max_size=300),  # UCS2 storage, surrogates included
    st.lists(st.tuples(code_points, st.integers(0, 1100)), max_size=4).map(
        lambda runs: [cp for cp, n in runs for _ in range(n)]
    ),  # long runs of one code point (packed-counter block edges)
    st.lists(st.one_of(st.integers(0xF00, 0xFFF), st.integers(0x4E00, 0x9FFF), ascii_points), max_size=1500),
    st.lists(neutral_points, max_size=300),  # letter-free text (issue #11)
    st.lists(st.one_of(neutral_points, st.integers(0xF00, 0xFFF)), max_size=300),  # Tibetan block + neutral
).map(lambda cps: "".join(map(chr, cps)))


@settings(max_examples=300, deadline=None)
@given(st.lists(text, max_size=12))
def test_hypothesis_c_equals_regex(texts):
    both(texts)
    for script in ("tibetan", "han", "latin", "Arab", "Khmr", "Hani+Hira+Kana"):
        np.testing.assert_array_equal(
            script_consistent(texts, script=script, backend="c"),
            script_consistent(texts, script=script, backend="regex"),
        )


@settings(max_examples=200, deadline=None)
@given(st.lists(neutral_text, min_size=1, max_size=8), st.sampled_from(["ཀ", "ི", "中", "a", "я"]), st.data())
def test_hypothesis_neutral_text_c_equals_regex(texts, letter, data):
    """Letter-free text is inconsistent with every script on both paths; one letter of the script,
    put anywhere in it, makes it consistent with that script and only that one."""
    both(texts)
    for script in ("tibetan", "han", "latin"):
        for kw in ({}, {"min_ratio": 0.0, "max_foreign": 1000}):
            c = script_consistent(texts, script=script, backend="c", **kw)
            np.testing.assert_array_equal(c, script_consistent(texts, script=script, backend="regex", **kw))
            assert not c.any(), [t for t, ok in zip(texts, c) if ok]
    where = [data.draw(st.integers(0, len(t)), label="position") for t in texts]
    lettered = [t[:i] + letter + t[i:] for t, i in zip(texts, where)]
    owner = {"ཀ": "tibetan", "ི": "tibetan", "中": "han", "a": "latin"}.get(letter)
    for script in ("tibetan", "han", "latin"):
        c = script_consistent(lettered, script=script, backend="c")
        np.testing.assert_array_equal(c, script_consistent(lettered, script=script, backend="regex"))
        assert c.tolist() == [script == owner] * len(lettered)


HOLE_CASES = ["", "་", "།", "༄༅", "༄༅། །", "༡༢༣", "0123", "༠༩ 42", "   ", "་།༄༅༡ 1"]


def test_hole_cases_on_the_default_c_path(monkeypatch):
    """The issue #11 hole cases go through the default backend, which must really be the C one (a spy
    counts the calls into the extension), and come out False there and on the regex path."""
    monkeypatch.delenv(S.ENV_VAR, raising=False)
    assert S._resolve_backend(None) == "c"
    real, calls = S._c, []

    class Spy:
        @staticmethod
        def profile(*args):
            calls.append(len(args[0]))
            return real.profile(*args)

    monkeypatch.setattr(S, "_c", Spy)
    got = script_consistent(HOLE_CASES)  # default script="tibetan", backend chosen by the module
    assert calls == [len(HOLE_CASES)], "script_consistent did not go through the C extension"
    assert got.tolist() == [False] * len(HOLE_CASES), [t for t, ok in zip(HOLE_CASES, got) if ok]
    np.testing.assert_array_equal(got, script_consistent(HOLE_CASES, backend="regex"))
    ok = script_consistent(["བོད་ཡིག།", "༄༅། །ཀ་"])
    assert ok.tolist() == [True, True] and len(calls) == 2


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=200))
def test_hypothesis_characters_c_equals_regex(s):
    both([s, s * 5])


def test_long_runs_cross_pack_blocks():
    """Runs longer than the packed counters' 255-per-lane block, every length around it."""
    texts = ["ཀ" * n for n in range(1015, 1030)] + ["ཀ中a1 ," * 4000, "\U00020000" * 5000, "a" * 100_000]
    prof = both(texts)
    assert prof[0, SCRIPT_CLASSES.index("Tibt")] == 1015


def test_hundred_megabyte_string():
    s = "བོད་ཡིག 中文 " * (100_000_000 // 30)  # ~100 MB of UTF-8, UCS2 storage
    prof = script_profile([s], backend="c")[0]
    reps = 100_000_000 // 30
    want = np.zeros(N, dtype=np.int64)
    want[SCRIPT_CLASSES.index("Tibt")] = 6 * reps
    want[SCRIPT_CLASSES.index("punct")] = reps  # the tsheg
    want[SCRIPT_CLASSES.index("Hani")] = 2 * reps
    want[SCRIPT_CLASSES.index("space")] = 2 * reps
    np.testing.assert_array_equal(prof, want)


@pytest.mark.parametrize("bad, index, typename", [([None], 0, "NoneType"), (["a", b"b"], 1, "bytes"), (["a"] * 5 + [1.5], 5, "float")])
def test_c_bad_items(bad, index, typename):
    with pytest.raises(TypeError, match=rf"^texts\[{index}\] must be str, got {typename}$"):
        script_profile(bad, backend="c")


def test_c_private_entry_rejects_bad_buffers():
    c, table = S._c, class_table()
    out = np.zeros((1, N), dtype=np.int64)
    with pytest.raises(TypeError, match="list or tuple"):
        c.profile(iter(["a"]), table, N, out)
    with pytest.raises(ValueError, match="table must hold"):
        c.profile(["a"], table[:100], N, out)
    with pytest.raises(ValueError, match="nclasses must be in"):
        c.profile(["a"], table, 0, out)
    with pytest.raises(ValueError, match=f"class index {N - 1}, expected < nclasses = 5"):
        c.profile(["a"], table, 5, np.zeros((1, 5), dtype=np.int64))
    with pytest.raises(TypeError, match="int64"):
        c.profile(["a"], table, N, np.zeros((1, N), dtype=np.float64))
    with pytest.raises(ValueError, match="out must hold"):
        c.profile(["a", "b"], table, N, out)
    ro = np.zeros((1, N), dtype=np.int64)
    ro.flags.writeable = False
    with pytest.raises((BufferError, ValueError)):
        c.profile(["a"], table, N, ro)


def test_threads_agree_and_release_gil():
    texts = ["བོད་ཡིག 中文 abc " * 50] * 2000
    want = script_profile(texts, backend="c")
    results, errors = [None] * 4, []

    def work(i):
        try:
            results[i] = script_profile(texts, backend="c")
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for r in results:
        np.testing.assert_array_equal(r, want)


def test_list_mutated_by_other_thread_is_safe():
    """Another thread clears and refills the list while the C path counts it: no crash."""
    texts = ["ཀ" * 10_000 + str(i) for i in range(200)]
    stop = threading.Event()

    def mutate():
        while not stop.is_set():
            saved = texts[:]
            texts.clear()
            texts.extend(saved)

    t = threading.Thread(target=mutate)
    t.start()
    try:
        for _ in range(50):
            prof = script_profile(list(texts) or ["ཀ"], backend="c")
            assert prof.sum() > 0
            S._c.profile(texts, class_table(), N, np.zeros((len(texts), N), dtype=np.int64))
    except ValueError as exc:  # the list length changed between len() and the call: a clean error
        assert "out must hold" in str(exc)  # noqa: PT017 - the call may also succeed; only its error is checked
    finally:
        stop.set()
        t.join()


def _rss_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def test_no_leak_million_calls():
    """10^6 calls of the C entry point (valid and invalid input): RSS stays flat."""
    c, table = S._c, class_table()
    texts = ["བོད་ཡིག", "中文 abc", "x" * 3000]
    out = np.zeros((3, N), dtype=np.int64)
    bad = ["a", None]
    bad_out = np.zeros((2, N), dtype=np.int64)

    def run(calls):
        for i in range(calls):
            c.profile(texts, table, N, out)
            if i % 10 == 0:
                with contextlib.suppress(TypeError):
                    c.profile(bad, table, N, bad_out)

    run(50_000)
    gc.collect()
    refs = [sys.getrefcount(s) for s in texts]
    before = _rss_kb()
    t0 = time.perf_counter()
    run(1_000_000)
    gc.collect()
    grown = _rss_kb() - before
    assert grown < 2048, f"RSS grew by {grown} kB over 10^6 calls ({time.perf_counter() - t0:.1f} s)"
    assert [sys.getrefcount(s) for s in texts] == refs, "string reference counts changed"


@pytest.mark.parametrize("nclasses", [1, 8, 9, 16, 17, 40, 255])
def test_c_paths_for_other_class_counts(nclasses):
    """Tables of every class count take the 8-class, 16-class or general path: exact on each."""
    rng = np.random.default_rng(nclasses)
    table = rng.integers(0, nclasses, size=0x110000, dtype=np.uint8)
    texts = ["".join(map(chr, rng.integers(0, hi, size=int(n)))) for hi in (0x100, 0x10000, 0x110000) for n in (0, 3, 300, 5000)]
    texts.append(chr(0x10FFFF) * 2000)
    out = np.zeros((len(texts), nclasses), dtype=np.int64)
    S._c.profile(texts, table, nclasses, out)
    want = np.stack([np.bincount(table[[ord(ch) for ch in t]].astype(np.int64), minlength=nclasses) for t in texts])
    np.testing.assert_array_equal(out, want)
