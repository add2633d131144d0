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

import pytest


@pytest.fixture(scope="session")
def demo_assets():
    """The offline demo's assets, built once into the user's cache (as the demo itself does)."""
    from semgrpo.demo.assets import build_demo

    return build_demo(log=lambda *_: None)


# Tests never write into the repository: the checkout's state at the start of the session is compared with
# its state at the end by tests/test_worktree_clean.py (which sorts last).
def pytest_sessionstart(session):
    from _helpers import WORKTREE_KEY, worktree_state

    session.config.stash[WORKTREE_KEY] = worktree_state()
