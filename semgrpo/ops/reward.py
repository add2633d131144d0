"""Semantic reward: cosine of row-normalized embeddings, threshold-rescaled, plus the language term.

``s = cos(c, r)``; ``R_sim = 0 if s <= tau else (s - tau) / (1 - tau)``;
``reward = w_sim * R_sim + w_lang * lang_ok``. Normalization divides by ``max(||x||, 1e-12)``
(as ``torch.nn.functional.normalize``), so a zero vector has similarity 0 instead of NaN.
"""

from __future__ import annotations

import torch

from ._dispatch import check_float_tensor, use_triton

try:
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the install
    triton = None

_NORM_EPS = 1e-12
# (BLOCK_D, elements per tile, num_warps); benchmarks set it to tune, None = default.
LAUNCH_OVERRIDE: tuple[int, int, int] | None = None


if triton is not None:

    @triton.jit
    def _semantic_reward_fwd_kernel(
        c_ptr, r_ptr, lang_ptr, out_ptr, sim_ptr, N, D,
        s_cn, s_cd, s_rn, s_rd, tau, w_sim, w_lang, norm_eps,
        BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        # Per row: dot, |c|^2, |r|^2 accumulated in fp32 over D.
        rows = (tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
        cols = tl.arange(0, BLOCK_D)
        rmask = rows < N
        dot = tl.zeros([BLOCK_N], tl.float32)
        cc = tl.zeros([BLOCK_N], tl.float32)
        rr = tl.zeros([BLOCK_N], tl.float32)
        for d0 in range(0, D, BLOCK_D):
            d = d0 + cols
            msk = rmask[:, None] & (d[None, :] < D)
            c = tl.load(c_ptr + rows[:, None] * s_cn + d[None, :] * s_cd, mask=msk, other=0.0).to(tl.float32)
            r = tl.load(r_ptr + rows[:, None] * s_rn + d[None, :] * s_rd, mask=msk, other=0.0).to(tl.float32)
            dot += tl.sum(c * r, axis=1)
            cc += tl.sum(c * c, axis=1)
            rr += tl.sum(r * r, axis=1)
        # s = <c/max(|c|,eps), r/max(|r|,eps)>
        s = dot / (tl.maximum(tl.sqrt(cc), norm_eps) * tl.maximum(tl.sqrt(rr), norm_eps))
        r_sim = tl.where(s <= tau, 0.0, (s - tau) / (1.0 - tau))
        lang = tl.load(lang_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
        tl.store(out_ptr + rows, w_sim * r_sim + w_lang * lang, mask=rmask)
        tl.store(sim_ptr + rows, s, mask=rmask)


def _check(c, r, lang_ok, tau, w_sim, w_lang):
    check_float_tensor("completion_emb", c, ndim=2)
    check_float_tensor("reference_emb", r, ndim=2)
    if c.shape != r.shape:
        raise ValueError(f"reference_emb shape {tuple(r.shape)} must equal completion_emb shape {tuple(c.shape)}")
    if not isinstance(lang_ok, torch.Tensor) or tuple(lang_ok.shape) != (c.shape[0],):
        raise ValueError(f"lang_ok must be a tensor of shape {(c.shape[0],)}, got {getattr(lang_ok, 'shape', lang_ok)}")
    if lang_ok.dtype != torch.bool and not lang_ok.is_floating_point():
        raise TypeError(f"lang_ok must be bool or float, got {lang_ok.dtype}")
    for name, t in (("reference_emb", r), ("lang_ok", lang_ok)):
        if t.device != c.device:
            raise ValueError(f"{name} is on {t.device} but completion_emb on {c.device}")
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not -1.0 <= tau < 1.0:
        raise ValueError(f"tau must be a number in [-1, 1), got {tau!r}")
    for name, v in (("w_sim", w_sim), ("w_lang", w_lang)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or abs(v) == float("inf"):
            raise ValueError(f"{name} must be a finite number, got {v!r}")


def semantic_reward_torch(completion_emb, reference_emb, lang_ok, *, tau, w_sim=1.5, w_lang=1.0):
    """Torch reference of :func:`semantic_reward` (same arguments and results)."""
    _check(completion_emb, reference_emb, lang_ok, tau, w_sim, w_lang)
    c = torch.nn.functional.normalize(completion_emb.float(), dim=1, eps=_NORM_EPS)
    r = torch.nn.functional.normalize(reference_emb.float(), dim=1, eps=_NORM_EPS)
    sim = (c * r).sum(dim=1)
    r_sim = torch.where(sim <= tau, 0.0, (sim - tau) / (1.0 - tau))
    return w_sim * r_sim + w_lang * lang_ok.float(), sim


def semantic_reward(
    completion_emb: torch.Tensor,
    reference_emb: torch.Tensor,
    lang_ok: torch.Tensor,
    *,
    tau: float,
    w_sim: float = 1.5,
    w_lang: float = 1.0,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Semantic + language reward of N completions against their references.

    Args:
        completion_emb: Embeddings of the completions (bf16/fp16/fp32; fp32 math).
        reference_emb: Embeddings of the references, same shape.
        lang_ok: 1/True where the completion is in the target script (bool or float).
        tau: Adequacy threshold in [-1, 1): similarities at or below it earn no R_sim.
        w_sim: Weight of R_sim.
        w_lang: Weight of the language term.
        backend: ``"auto"``/``"triton"``/``"torch"``; default from ``SEMGRPO_OPS``.

    Returns:
        ``(reward, sim)``, both fp32: the weighted reward and the raw cosine similarity.

    Shape:
        completion_emb, reference_emb: [N, D], lang_ok: [N] -> reward: [N], sim: [N]
    """
    _check(completion_emb, reference_emb, lang_ok, tau, w_sim, w_lang)
    if triton is None or not use_triton(completion_emb, reference_emb, lang_ok, backend=backend):
        return semantic_reward_torch(completion_emb, reference_emb, lang_ok, tau=tau, w_sim=w_sim, w_lang=w_lang)
    N, D = completion_emb.shape
    out = torch.empty(N, dtype=torch.float32, device=completion_emb.device)
    sim = torch.empty(N, dtype=torch.float32, device=completion_emb.device)
    if N == 0:
        return out, sim
    lang = lang_ok.to(torch.float32).contiguous()
    block_d, elems, warps = LAUNCH_OVERRIDE or (1024, 4096, 4)
    block_d = min(triton.next_power_of_2(max(D, 1)), block_d)
    block_n = max(1, min(64, elems // block_d))
    c, r = completion_emb, reference_emb
    _semantic_reward_fwd_kernel[(triton.cdiv(N, block_n),)](
        c, r, lang, out, sim, N, D, c.stride(0), c.stride(1), r.stride(0), r.stride(1),
        float(tau), float(w_sim), float(w_lang), _NORM_EPS, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=warps,
    )
    return out, sim
