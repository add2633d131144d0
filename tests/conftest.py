"""Test-wide settings: offline hub, and the Triton interpreter on machines without an NVIDIA GPU.

TRITON_INTERPRET must be set before triton is first imported (any `semgrpo.ops` import does), so it is
set here, at the top of the first conftest pytest loads.
"""
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "TRITON_INTERPRET" not in os.environ and not (os.path.exists("/dev/nvidia0") or shutil.which("nvidia-smi")):
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def demo_assets():
    """The offline demo's assets, built once into the user's cache (as the demo itself does)."""
    from semgrpo.demo import build_demo

    return build_demo(log=lambda *_: None)


# ---------------------------------------------------------------------------------------------------
# Tests never write into the repository: the state of the checkout at the start of the session is
# compared with its state at the end by tests/test_worktree_clean.py (which sorts last).

# Caches and build outputs that running the tests may legitimately create or refresh.
_WORKTREE_IGNORED = ("__pycache__", ".pytest_cache", ".hypothesis", "build", ".cache")  # + *.egg-info


def worktree_state():
    """{path: (git status code, mtime_ns, size)} for every changed, untracked or ignored file of the
    checkout (caches excluded), or None outside a git checkout."""
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "status", "--porcelain", "-z", "--untracked-files=all", "--ignored"],
                             cwd=repo, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    state = {}
    for entry in out.stdout.split("\0"):
        if len(entry) < 4:
            continue
        code, path = entry[:2], entry[3:]
        parts = path.rstrip("/").split("/")
        if any(p in _WORKTREE_IGNORED or p.endswith(".egg-info") for p in parts) or path.endswith((".so", ".pyc")):
            continue
        try:
            st = (repo / path).stat()
            state[path] = (code, st.st_mtime_ns, st.st_size)
        except OSError:
            state[path] = (code, None, None)
    return state


def pytest_sessionstart(session):
    session.config.stash[WORKTREE_KEY] = worktree_state()


WORKTREE_KEY = pytest.StashKey[object]()
