"""Per-token log-probabilities of given ids under (temperature-scaled) logits, without grad.

Used for the old-policy and reference log-probs of GRPO. Neither path materializes the fp32
log-softmax of the whole [B, T, V] logits: the torch reference works in row chunks, the Triton
kernel streams each row with the online logsumexp of ``_online_lse``.
"""

from __future__ import annotations

import torch

from ._dispatch import check_float_tensor, check_positive, use_triton

try:
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the install
    triton = None

_CHUNK_ELEMS = 1 << 22  # fp32 elements per torch chunk (16 MiB)

# (BLOCK_V, num_warps) of the Triton kernel, as _grpo_kernel.LAUNCH_OVERRIDE for grpo_loss; benchmarks
# and tests set it (tests force a small BLOCK_V so that the interpreter runs many vocabulary blocks).
LAUNCH_OVERRIDE: tuple[int, int] | None = None


if triton is not None:
    from ._online_lse import row_logp

    @triton.jit
    def _token_logprobs_fwd_kernel(
        x_ptr, ids_ptr, out_ptr, T, V,
        stride_xb, stride_xt, stride_xv, stride_ib, stride_it, inv_temp,
        BLOCK_V: tl.constexpr,
    ):
        # logp = x[id]/temp - logsumexp(x/temp), one program per row.
        row = tl.program_id(0).to(tl.int64)
        b = row // T
        t = row % T
        tok = tl.load(ids_ptr + b * stride_ib + t * stride_it).to(tl.int64)
        logp, _, _ = row_logp(x_ptr + b * stride_xb + t * stride_xt, tok, stride_xv, V, inv_temp, False, BLOCK_V)
        tl.store(out_ptr + row, logp)


def _check(logits: torch.Tensor, ids: torch.Tensor, temperature: float) -> None:
    check_float_tensor("logits", logits, ndim=3)
    if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"ids must be an int64/int32 tensor, got {getattr(ids, 'dtype', type(ids).__name__)}")
    if tuple(ids.shape) != tuple(logits.shape[:2]):
        raise ValueError(f"ids shape {tuple(ids.shape)} must equal logits.shape[:2] = {tuple(logits.shape[:2])}")
    if ids.device != logits.device:
        raise ValueError(f"ids on {ids.device} but logits on {logits.device}")
    check_positive("temperature", temperature)


def token_logprobs_torch(logits: torch.Tensor, ids: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    """Torch reference of :func:`token_logprobs`, in row chunks of at most 16 MiB of fp32."""
    _check(logits, ids, temperature)
    B, T, V = logits.shape
    out = torch.empty(B, T, dtype=torch.float32, device=logits.device)
    step = max(1, _CHUNK_ELEMS // max(V, 1))
    with torch.no_grad():
        for b in range(B):
            for t0 in range(0, T, step):
                x = logits[b, t0 : t0 + step].float() / temperature  # [chunk, V]
                tok = ids[b, t0 : t0 + step].long()
                out[b, t0 : t0 + step] = x.gather(1, tok[:, None]).squeeze(1) - torch.logsumexp(x, dim=1)
    return out


def _launch_config(V: int) -> tuple[int, int]:
    """(BLOCK_V, num_warps) for rows of V logits."""
    # (4096, 8) reached ~74% of peak bandwidth on H100 at V=151936 (benchmarks/results); no other
    # config was swept.
    block, warps = LAUNCH_OVERRIDE or (4096, 8)
    block = min(block, triton.next_power_of_2(V))
    return block, min(warps, max(1, block // 64))


def _token_logprobs_triton(logits: torch.Tensor, ids: torch.Tensor, temperature: float) -> torch.Tensor:
    B, T, V = logits.shape
    out = torch.empty(B, T, dtype=torch.float32, device=logits.device)
    if B * T == 0:
        return out
    block_v, warps = _launch_config(V)
    _token_logprobs_fwd_kernel[(B * T,)](
        logits, ids, out, T, V,
        logits.stride(0), logits.stride(1), logits.stride(2), ids.stride(0), ids.stride(1),
        1.0 / temperature, BLOCK_V=block_v, num_warps=warps,
    )
    return out


def token_logprobs(
    logits: torch.Tensor, ids: torch.Tensor, *, temperature: float = 1.0, backend: str | None = None
) -> torch.Tensor:
    """Log-probability of each id under ``softmax(logits / temperature)``, without grad.

    Args:
        logits: Any float dtype, may be a strided view (e.g. ``full_logits[:, P-1:-1]``), aligned
            so that ``logits[b, t]`` predicts ``ids[b, t]``.
        ids: Token ids (int64 or int32). An id outside ``[0, V)`` gives NaN on the Triton path
            and an error on the torch path.
        temperature: Positive divisor of the logits.
        backend: ``"auto"``/``"triton"``/``"torch"``; default from ``SEMGRPO_OPS``.

    Returns:
        Per-token log-probs in fp32.

    Shape:
        logits: [B, T, V], ids: [B, T] -> [B, T]
    """
    _check(logits, ids, temperature)
    if triton is None or not use_triton(logits, ids, backend=backend):
        return token_logprobs_torch(logits, ids, temperature=temperature)
    return _token_logprobs_triton(logits.detach(), ids, float(temperature))
