"""atheris fuzz target: the C path of semgrpo.script must equal the regex path, never crash.

Run: ``python tests/fuzz_script.py -max_total_time=600`` (libFuzzer flags); tests/test_script_fuzz.py
runs it for ~20 s. The input bytes become a batch of strings of every PEP 393 kind (code points
from the whole range, lone surrogates included), letter-free strings (Tibetan marks, punctuation,
digits, symbols, spaces) and sometimes a non-str item, which must give the same TypeError on both
paths. Both paths must also agree on `script_consistent` for every script, and a letter-free
string must be inconsistent with every script (issue #11).
"""
import sys
from pathlib import Path

import atheris

# This checkout's semgrpo, not an installed one (sys.path[0] is tests/script when run as a script).
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports():
    import numpy as np

    import semgrpo.script as S

_BAD = (None, b"bytes", 3, 1.5, ["nested"])
# Code points that are no letter of any script (hand-listed, not read from the class table).
_NEUTRAL = tuple(
    sorted(
        {*range(0x0F01, 0x0F18), *range(0x0F1A, 0x0F35), 0x0F36, 0x0F38, *range(0x0F3A, 0x0F3E), 0x0F48,
         *range(0x0F6D, 0x0F71), 0x0F85, 0x0F98, *range(0x0FBD, 0x0FC6), *range(0x0FC7, 0x1000)}
        | {*range(0x20, 0x41), *range(0x5B, 0x61), *range(0x7B, 0x7F), 0x09, 0x0A, 0x3000, 0x3001, 0x3002,
           0xFF0C, *range(0x2160, 0x2183), 0xFA6E, 0x20AC, 0x1F600}
    )
)
_SCRIPTS = ("tibetan", "han", "latin", "Arab", "Khmr", "Hani+Hira+Kana")


def _texts(fdp):
    texts = []
    neutral = []
    for _ in range(fdp.ConsumeIntInRange(0, 6)):
        mode = fdp.ConsumeIntInRange(0, 6)
        n = fdp.ConsumeIntInRange(0, 400)
        if mode == 0:
            texts.append(fdp.ConsumeUnicodeNoSurrogates(n))
        elif mode == 1:
            texts.append("".join(map(chr, fdp.ConsumeIntListInRange(n, 0, 0x10FFFF))))
        elif mode == 2:
            texts.append("".join(map(chr, fdp.ConsumeIntListInRange(n, 0, 0xFFFF))))
        elif mode == 3:
            texts.append("".join(map(chr, fdp.ConsumeIntListInRange(n, 0, 0xFF))))
        elif mode == 4:
            texts.append(chr(fdp.ConsumeIntInRange(0, 0x10FFFF)) * fdp.ConsumeIntInRange(0, 3000))
        elif mode == 5:
            picks = fdp.ConsumeIntListInRange(n, 0, len(_NEUTRAL) - 1)
            neutral.append(len(texts))
            texts.append("".join(chr(_NEUTRAL[k]) for k in picks))
        elif fdp.ConsumeBool():
            texts.append(_BAD[fdp.ConsumeIntInRange(0, len(_BAD) - 1)])
    return texts, neutral


def test_one_input(data):
    fdp = atheris.FuzzedDataProvider(data)
    texts, neutral = _texts(fdp)
    results = []
    for backend in ("c", "regex"):
        try:
            results.append(S.script_profile(texts, backend=backend))
        except TypeError as exc:
            results.append(str(exc))
    c, r = results
    if isinstance(c, str) or isinstance(r, str):
        assert c == r, (c, r)
        return
    assert np.array_equal(c, r), (texts, c, r)
    assert c.sum(axis=1).tolist() == [len(t) for t in texts]
    for script in _SCRIPTS:
        cc = S.script_consistent(texts, script=script, backend="c")
        rc = S.script_consistent(texts, script=script, backend="regex")
        assert np.array_equal(cc, rc), (script, texts, cc, rc)
        assert not cc[neutral].any(), (script, [texts[i] for i in neutral])


def main():
    if S._c is None:
        sys.exit("semgrpo._script_check is not built: python setup.py build_ext --inplace")
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
