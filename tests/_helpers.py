"""Helpers for the tests that run the entry points as a user does (a unique module name: tests/ops has
its own conftest, so `from conftest import ...` would be ambiguous)."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# Set in the pytest process by in-process DeepSpeed tests; a child must not join that process group.
_LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                  "CROSS_RANK", "CROSS_SIZE")


def user_env(**extra: str) -> dict:
    """The environment a user's shell would have: no launcher variables inherited from the test process."""
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARS}
    env.update(extra)
    return env


def run_cli(script: str, *args: str, timeout: int = 600, launcher: list | None = None, env: dict | None = None):
    """Run a bin/ script as a user does; returns the CompletedProcess (text mode)."""
    cmd = (launcher or [sys.executable]) + [str(REPO / "bin" / script), *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=user_env(**(env or {})))
