"""Helpers for the tests that run the entry points as a user does (a unique module name: tests/ops has
its own conftest, so `from conftest import ...` would be ambiguous)."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_cli(script: str, *args: str, timeout: int = 600, launcher: list | None = None, env: dict | None = None):
    """Run a bin/ script; returns the CompletedProcess (text mode)."""
    cmd = (launcher or [sys.executable]) + [str(REPO / "bin" / script), *args]
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=full_env)
