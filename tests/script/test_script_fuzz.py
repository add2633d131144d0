"""Runs the atheris fuzz target (tests/script/fuzz_script.py) for ~10 s in a subprocess (CI time; run it longer by hand: python tests/script/fuzz_script.py -max_total_time=600)."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

import semgrpo.script as S

TARGET = Path(__file__).resolve().parent / "fuzz_script.py"


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris is not installed (pip install atheris)")
@pytest.mark.skipif(S._c is None, reason="C extension semgrpo._script_check not built")
def test_fuzz_script_10s(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(TARGET), "-max_total_time=10", "-rss_limit_mb=2048", f"-artifact_prefix={tmp_path}/"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    tail = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == 0, f"fuzz target failed (rc={proc.returncode}):\n{tail}"
    assert "Done" in tail and "runs in" in tail, f"fuzzer did not run to completion:\n{tail}"
