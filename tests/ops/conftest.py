"""Ops tests: run Triton kernels under the interpreter on CPU-only machines.

TRITON_INTERPRET must be set before triton is first imported, hence at conftest import time. On a
machine with an NVIDIA GPU it is left unset so the kernels compile and run on CUDA.
"""

import os
import shutil

if "TRITON_INTERPRET" not in os.environ and not (os.path.exists("/dev/nvidia0") or shutil.which("nvidia-smi")):
    os.environ["TRITON_INTERPRET"] = "1"

import pytest
import torch


def _combos():
    out = [("torch", "cpu")]
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        out.append(("triton", "cpu"))
    if torch.cuda.is_available():
        out += [("torch", "cuda"), ("triton", "cuda")]
    return out


@pytest.fixture(params=_combos(), ids=lambda p: f"{p[0]}-{p[1]}")
def backend_device(request):
    """(backend, device) pairs available here: torch on CPU always, Triton interpreted or on CUDA."""
    return request.param


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny shapes: several times faster than two on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
