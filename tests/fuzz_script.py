"""atheris fuzz target: the C path of semgrpo.script must equal the regex path, never crash.

Run: ``python tests/fuzz_script.py -max_total_time=600`` (libFuzzer flags); tests/test_script_fuzz.py
runs it for ~20 s. The input bytes become a batch of strings of every PEP 393 kind (code points
from the whole range, lone surrogates included) and sometimes a non-str item, which must give
the same TypeError on both paths.
"""
import sys

import atheris

with atheris.instrument_imports():
    import numpy as np

    import semgrpo.script as S

_BAD = (None, b"bytes", 3, 1.5, ["nested"])


def _texts(fdp):
    texts = []
    for _ in range(fdp.ConsumeIntInRange(0, 6)):
        mode = fdp.ConsumeIntInRange(0, 5)
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
        elif fdp.ConsumeBool():
            texts.append(_BAD[fdp.ConsumeIntInRange(0, len(_BAD) - 1)])
    return texts


def test_one_input(data):
    fdp = atheris.FuzzedDataProvider(data)
    texts = _texts(fdp)
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


def main():
    if S._c is None:
        sys.exit("semgrpo._script_check is not built: python setup.py build_ext --inplace")
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
