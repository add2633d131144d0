"""Triton tile kernels behind :mod:`semgrpo.ops.linear_grpo_loss` (the fused LM-head GRPO op).

Hybrid design. Per (token chunk x vocabulary chunk) tile the op does one or two big matmuls and a handful
of elementwise passes over an fp32 [tok, voc] tile. The matmuls (``h @ W_c.T`` in both passes, then
``dlogits @ W_c`` and ``dlogits.T @ h`` in the backward) stay in cuBLAS through torch: they carry almost all
the FLOPs and must run at the device's matmul peak, which a hand-written Triton GEMM would have to be tuned
per chip to match. What Triton buys is the elementwise work in between, which the torch path spreads over
4-6 separate passes over each 32 MiB tile (add bias, scale, max, exp, sum, entropy product, gather; or
log p, exp, the dlogits expression, the target scatter, the bias-gradient sum):

* ``fwd_tile``: one read of the raw tile ``z = h @ W_c.T`` updates each row's running state (max, sum of
  exp, entropy accumulator ``sum exp(x - max) (x - max)``: the online logsumexp of ``_online_lse``, and the
  target logit) with bias and ``1 / temperature`` applied on the fly.
* ``bwd_tile``: one read of ``z`` and one write of ``dlogits = (g_lp * (onehot - p) - g_ent * p *
  (log p + H)) / temperature``, in place over ``z`` or rounded once into a bf16 buffer for the backward
  matmuls (``linear_grpo_loss.HALF_DLOGITS``), plus optional fp32 per-program column sums of
  ``dlogits`` for the bias gradient (deterministic, no atomics).

All arithmetic is fp32 (values are cast right after ``tl.load``: the interpreter gets bf16 arithmetic wrong).
Each program owns ``BLOCK_N`` rows of the tile and walks its columns in ``BLOCK_V`` blocks, so the running
state lives in registers and no cross-program reduction is needed. The launch defaults have not been timed
on a GPU yet.
"""

from __future__ import annotations

import contextlib

import torch

try:
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the install
    triton = None

# (BLOCK_N rows, BLOCK_V columns, num_warps) of both tile kernels; tests force small blocks so that the
# interpreter walks several column blocks inside one vocabulary chunk, benchmarks may sweep it.
LAUNCH_OVERRIDE: tuple[int, int, int] | None = None


if triton is not None:
    from ._online_lse import lse_merge, lse_reduce

    @triton.jit
    def _tile_block(zrow, b_ptr, v, ok, C, s_b, HAS_BIAS: tl.constexpr):
        """fp32 ``z + b`` of one [BLOCK_N, BLOCK_V] block of the tile (columns `v`, 0 outside `ok`)."""
        x = tl.load(zrow + v[None, :], mask=ok, other=0.0).to(tl.float32)
        if HAS_BIAS:
            x += tl.load(b_ptr + v * s_b, mask=v < C, other=0.0).to(tl.float32)[None, :]
        return x

    @triton.jit
    def _linear_fwd_tile_kernel(
        z_ptr, b_ptr, ids_ptr, max_ptr, sum_ptr, acc_ptr, tgt_ptr,
        n_rows, C, v0, s_zn, s_b, inv_temp,
        HAS_BIAS: tl.constexpr, WITH_ENT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
    ):
        # x = (z + b) / T over this tile's C columns (vocab ids v0 .. v0 + C - 1), folded lane by lane into an
        # online-logsumexp state (_online_lse), reduced per row, then merged into the row state kept by the caller
        # across tiles (max -inf before the first one).
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        rmask = rows < n_rows
        rows64 = rows.to(tl.int64)
        zrow = z_ptr + rows64[:, None] * s_zn
        cols = tl.arange(0, BLOCK_V)
        m = tl.full([BLOCK_N, BLOCK_V], float("-inf"), tl.float32)
        s = tl.zeros([BLOCK_N, BLOCK_V], tl.float32)
        a = tl.zeros([BLOCK_N, BLOCK_V], tl.float32)
        for c0 in range(0, C, BLOCK_V):
            v = c0 + cols
            ok = rmask[:, None] & (v < C)[None, :]
            x = _tile_block(zrow, b_ptr, v, ok, C, s_b, HAS_BIAS)
            x = tl.where(ok, x * inv_temp, float("-inf"))
            m, s, a = lse_merge(m, s, a, x, 1.0, 0.0, WITH_ENT)
        m, s, a = lse_reduce(m, s, a, 1, WITH_ENT)
        m_old = tl.load(max_ptr + rows, mask=rmask, other=float("-inf"))
        s_old = tl.load(sum_ptr + rows, mask=rmask, other=0.0)
        a_old = s_old
        if WITH_ENT:
            a_old = tl.load(acc_ptr + rows, mask=rmask, other=0.0)
        m, s, a = lse_merge(m_old, s_old, a_old, m, s, a, WITH_ENT)
        tl.store(sum_ptr + rows, s, mask=rmask)
        tl.store(max_ptr + rows, m, mask=rmask)
        if WITH_ENT:
            tl.store(acc_ptr + rows, a, mask=rmask)
        # the target logit, when this row's id falls inside the tile
        local = tl.load(ids_ptr + rows, mask=rmask, other=-1).to(tl.int64) - v0
        hit = rmask & (local >= 0) & (local < C)
        lc = tl.where(hit, local, 0)
        xt = tl.load(z_ptr + rows64 * s_zn + lc, mask=hit, other=0.0).to(tl.float32)
        if HAS_BIAS:
            xt += tl.load(b_ptr + lc * s_b, mask=hit, other=0.0).to(tl.float32)
        tl.store(tgt_ptr + rows, xt * inv_temp, mask=hit)

    @triton.jit
    def _linear_bwd_tile_kernel(
        z_ptr, d_ptr, b_ptr, ids_ptr, lse_ptr, ent_ptr, gl_ptr, ge_ptr, gb_ptr,
        n_rows, C, v0, s_zn, s_dn, s_b, s_gb, inv_temp,
        HAS_BIAS: tl.constexpr, HAS_ENT: tl.constexpr, HAS_GB: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
    ):
        # d = d(g_lp * logp + g_ent * H) / dz = (g_lp * (onehot - p) - g_ent * p * (log p + H)) / T, with
        # log p = (z + b) / T - lse. d may alias z: every element is read before the same address is written.
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        rmask = rows < n_rows
        rows64 = rows.to(tl.int64)
        lse = tl.load(lse_ptr + rows, mask=rmask, other=0.0)
        gl = tl.load(gl_ptr + rows, mask=rmask, other=0.0)
        coef = gl
        if HAS_ENT:
            ge = tl.load(ge_ptr + rows, mask=rmask, other=0.0)
            coef = gl + ge * tl.load(ent_ptr + rows, mask=rmask, other=0.0)
        local = tl.load(ids_ptr + rows, mask=rmask, other=-1).to(tl.int64) - v0
        zrow = z_ptr + rows64[:, None] * s_zn
        drow = d_ptr + rows64[:, None] * s_dn
        cols = tl.arange(0, BLOCK_V)
        for c0 in range(0, C, BLOCK_V):
            v = c0 + cols
            ok = rmask[:, None] & (v < C)[None, :]
            x = _tile_block(zrow, b_ptr, v, ok, C, s_b, HAS_BIAS)
            logp = x * inv_temp - lse[:, None]
            p = tl.exp(logp)
            if HAS_ENT:
                d = -p * (coef[:, None] + ge[:, None] * logp)
            else:
                d = -p * coef[:, None]
            d = (d + tl.where(v[None, :] == local[:, None], gl[:, None], 0.0)) * inv_temp
            d = tl.where(ok, d, 0.0)
            tl.store(drow + v[None, :], d.to(d_ptr.dtype.element_ty), mask=ok)
            if HAS_GB:
                # this program's share of grad_bias, summed in fp32 before any rounding of d
                tl.store(gb_ptr + tl.program_id(0).to(tl.int64) * s_gb + v, tl.sum(d, axis=0), mask=v < C)


def _launch(n_rows: int, C: int) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_V, num_warps, grid size) for a tile of n_rows x C."""
    # Untimed default: 8 x 256 fp32 elements per step (16 per thread at 4 warps), one program per 8 rows,
    # so a 4096-row tile launches 512 programs, ~4 per SM on an H100/H200.
    block_n, block_v, warps = LAUNCH_OVERRIDE or (8, 256, 4)
    block_n = max(1, min(block_n, triton.next_power_of_2(n_rows)))
    block_v = max(16, min(block_v, triton.next_power_of_2(C)))
    warps = max(1, min(warps, (block_n * block_v) // 256))
    return block_n, block_v, warps, triton.cdiv(n_rows, block_n)


def fwd_tile(z, b, ids, v0, temperature, run_max, run_sum, run_acc, target):
    """Fold the raw fp32 tile ``z = h @ W_c.T`` [n, C] (vocabulary ids ``v0 .. v0 + C - 1``, bias chunk
    ``b`` [C] or None) into the rows' running max / sum-exp / entropy accumulator (None: no entropy) /
    target logit, all fp32 [n] views updated in place."""
    n, C = z.shape
    if n == 0:
        return
    assert z.stride(1) == 1 and ids.is_contiguous()
    block_n, block_v, warps, grid = _launch(n, C)
    with _on_device(z):
        _linear_fwd_tile_kernel[(grid,)](
            z, z if b is None else b, ids, run_max, run_sum, run_sum if run_acc is None else run_acc, target,
            n, C, v0, z.stride(0), 0 if b is None else b.stride(0), 1.0 / temperature,
            HAS_BIAS=b is not None, WITH_ENT=run_acc is not None, BLOCK_N=block_n, BLOCK_V=block_v,
            num_warps=warps,
        )


def bwd_tile(z, out, b, ids, v0, temperature, lse, ent, g_lp, g_ent, want_gb):
    """Write ``dlogits`` of the raw fp32 tile ``z`` [n, C] into ``out`` (z itself, or a buffer of another
    float dtype). ``lse``, ``g_lp`` fp32 [n]; ``ent``/``g_ent`` fp32 [n] or None (no entropy term).
    Returns the fp32 [C] column sum of ``dlogits`` when `want_gb`, else None."""
    n, C = z.shape
    if n == 0:
        return torch.zeros(C, dtype=torch.float32, device=z.device) if want_gb else None
    assert z.stride(1) == 1 and out.stride(1) == 1 and ids.is_contiguous()
    block_n, block_v, warps, grid = _launch(n, C)
    gb = torch.empty(grid, C, dtype=torch.float32, device=z.device) if want_gb else None
    has_ent = g_ent is not None
    with _on_device(z):
        _linear_bwd_tile_kernel[(grid,)](
            z, out, z if b is None else b, ids, lse, ent if has_ent else lse, g_lp, g_ent if has_ent else g_lp,
            z if gb is None else gb,
            n, C, v0, z.stride(0), out.stride(0), 0 if b is None else b.stride(0), C, 1.0 / temperature,
            HAS_BIAS=b is not None, HAS_ENT=has_ent, HAS_GB=want_gb, BLOCK_N=block_n, BLOCK_V=block_v,
            num_warps=warps,
        )
    return None if gb is None else gb.sum(0)


def _on_device(t: torch.Tensor):
    # Triton launches on the current CUDA device, which need not be the one holding the tile
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()
