"""Run the numerically sensitive tests as three different x86-64 CPUs would: `python tests/portability.py`.

A tolerance tuned to one machine passes there and fails on the next. Each run below restricts the kernels the
libraries dispatch to, as an older or a newer CPU would select them:
- ATen's vectorised CPU kernels (`ATEN_CPU_CAPABILITY`: default = no AVX, avx2, or the machine's own, e.g. avx512);
- oneDNN's matmuls and convolutions (`ONEDNN_MAX_CPU_ISA`: SSE41, AVX2, or all the machine has);
- numpy's SIMD loops, which the Triton interpreter computes with (`NPY_DISABLE_CPU_FEATURES`).
The sensitive tests are those comparing floating-point results across code paths: the kernels, the gradient
parity harness, export, the TRL integration, the fused head and full-parameter training. Each run prints its
pytest summary; the script exits non-zero if any run failed. `--only default,avx2` picks runs (the full suite is
already the native one); other arguments go to pytest (e.g. -x, -k ...).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SENSITIVE = ["tests/ops", "tests/test_grpo_parity.py", "tests/test_export.py", "tests/integrations/test_trl.py",
             "tests/integrations/test_trl_zero3.py", "tests/test_fused_head.py", "tests/test_full_parameter.py"]
# numpy 2.x dispatch targets above its x86-64-v2 baseline: v3 is AVX2, v4 and the named ones AVX-512.
_NUMPY_AVX512 = "X86_V4 AVX512_ICL AVX512_SPR"
RUNS = {
    "default": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41",
                "NPY_DISABLE_CPU_FEATURES": "X86_V3 " + _NUMPY_AVX512},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "NPY_DISABLE_CPU_FEATURES": _NUMPY_AVX512},
    "native": {},  # whatever this machine has
}
_OURS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "NPY_DISABLE_CPU_FEATURES")


def capability(env: dict) -> str:
    """The capability ATen actually uses under `env` (asking a fresh interpreter)."""
    code = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def main(args: list[str]) -> int:
    names = list(RUNS)
    if "--only" in args:
        i = args.index("--only")
        names = args[i + 1].split(",") if i + 1 < len(args) else []
        unknown = [n for n in names if n not in RUNS]
        if not names or unknown:
            print(f"portability: error: --only takes a comma-separated subset of {', '.join(RUNS)}, got "
                  f"{args[i + 1] if i + 1 < len(args) else 'nothing'!r}", file=sys.stderr)
            return 2
        args = args[:i] + args[i + 2:]
    failed = []
    for name in names:
        settings = RUNS[name]
        env = {k: v for k, v in os.environ.items() if k not in _OURS}
        env.update(settings)
        shown = " ".join(f"{k}={v}" for k, v in settings.items()) or "(no restriction)"
        print(f"portability: {name}: ATen uses {capability(env)}; {shown}", flush=True)
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SENSITIVE,
                               *args], cwd=REPO, env=env, capture_output=True, text=True)
        summary = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
        print(f"portability: {name}: {summary} ({time.perf_counter() - start:.0f} s)", flush=True)
        if proc.returncode != 0:
            failed.append(name)
            print(proc.stdout[-6000:], proc.stderr[-2000:], sep="\n", flush=True)
    print("portability: " + ("all runs passed" if not failed else f"FAILED under {', '.join(failed)}"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
