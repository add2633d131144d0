"""pytest plugin of gpu_check's test steps (``python -m pytest -p gpu.pytest_plugin ...`` with benchmarks/ on the
path): records how many CUDA memory allocations each test's call made, as the JUnit XML property
``cuda_allocations``. A test whose parameters name CUDA but that allocated nothing there did not run on the GPU;
the count is the evidence that it did, whatever its id says (tests/ops/test_linear_grpo_kernel.py picks its
device at import time, so its ids do not name one)."""

from __future__ import annotations

import pytest


def cuda_allocations() -> int:
    """CUDA allocations requested from torch's caching allocator so far in this process (0 before any)."""
    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return 0
    return int(torch.cuda.memory_stats().get("allocation.all.allocated", 0))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    before = cuda_allocations()
    yield
    item.user_properties.append(("cuda_allocations", cuda_allocations() - before))
