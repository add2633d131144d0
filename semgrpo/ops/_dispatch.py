"""Backend choice shared by the ops: Triton kernels on CUDA, torch references elsewhere.

The environment variable ``SEMGRPO_OPS`` (``auto`` | ``triton`` | ``torch``, default ``auto``) or the
``backend=`` keyword of each public op forces a path. ``auto`` picks Triton when every tensor is on a
CUDA device and Triton imports, else the torch reference. Forcing ``triton`` on CPU tensors works only
under the Triton interpreter (``TRITON_INTERPRET=1``, as the tests do).
"""

from __future__ import annotations

import functools
import os

import torch

_BACKENDS = ("auto", "triton", "torch")


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """Whether ``import triton`` succeeds (cached)."""
    try:
        import triton
        import triton.language  # noqa: F401
    except Exception:  # pragma: no cover - depends on the install
        return False
    return True


def interpreter_enabled() -> bool:
    """Whether the Triton interpreter is requested (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def use_triton(*tensors: torch.Tensor | None, backend: str | None = None) -> bool:
    """Decide whether an op runs its Triton kernel.

    Args:
        *tensors: The op's tensor inputs (``None`` entries are ignored).
        backend: ``"auto"``, ``"triton"`` or ``"torch"``; ``None`` reads ``SEMGRPO_OPS``.

    Returns:
        True for the Triton path, False for the torch reference.

    Raises:
        ValueError: Unknown backend name.
        RuntimeError: Triton forced but unusable for these tensors.
    """
    choice = backend if backend is not None else os.environ.get("SEMGRPO_OPS", "auto")
    choice = str(choice).strip().lower()
    if choice not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {choice!r} (argument or SEMGRPO_OPS)")
    if choice == "torch":
        return False
    present = [t for t in tensors if t is not None]
    all_cuda = bool(present) and all(t.is_cuda for t in present)
    if choice == "auto":
        return all_cuda and triton_available()
    if not triton_available():
        raise RuntimeError("backend 'triton' was forced but triton cannot be imported")
    if not all_cuda and not interpreter_enabled():
        devices = sorted({str(t.device) for t in present})
        raise RuntimeError(
            f"backend 'triton' was forced on tensors on {devices}; Triton needs CUDA tensors "
            "or TRITON_INTERPRET=1 set before triton is imported"
        )
    return True


def check_float_tensor(name: str, t: object, *, ndim: int | tuple[int, ...]) -> torch.Tensor:
    """Raise unless ``t`` is a floating tensor with the expected number of dimensions."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    dims = (ndim,) if isinstance(ndim, int) else ndim
    if t.dim() not in dims:
        raise ValueError(f"{name} must have {' or '.join(map(str, dims))} dims, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got dtype {t.dtype}")
    return t


def check_positive(name: str, value: float) -> float:
    """Raise unless ``value`` is a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not (value > 0 and value != float("inf")):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)
