"""The streaming (online) logsumexp every Triton kernel of semgrpo runs, with the entropy riding along.

A state ``(m, s, u)`` summarises a set of values x: ``m = max x``, ``s = sum exp(x - m)`` and (for the entropy)
``u = sum exp(x - m) (x - m)``; the empty set is ``(-inf, 0, 0)``. Then ``lse = m + log s`` and the entropy of
``softmax(x)`` is ``log s - u / s``, which never subtracts two large numbers. Two states merge exactly
(``lse_merge``), a value x is the state ``(x, 1, 0)``, and the lanes of a block reduce to one state
(``lse_reduce``). The kernels keep one state per lane (per column of a block), fold each new block in
elementwise (no cross-lane reduction inside the loop) and reduce the lanes once at the end:

* ``row_logp``: one row of logits streamed block by block (``token_logprobs``, and ``grpo_loss``'s forward
  kernels, with or without the entropy);
* ``_linear_kernel``'s forward tile: [rows, columns] blocks of a logits tile, then merged with the rows' state
  from earlier vocabulary chunks.

All arithmetic is fp32 (callers cast loaded values). One ``exp`` per merge: of the two weights
``exp(m1 - m)`` and ``exp(m2 - m)`` one is exactly 1.
"""

from __future__ import annotations

try:
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the install
    triton = None

if triton is not None:

    @triton.jit
    def lse_merge(m1, s1, u1, m2, s2, u2, WITH_ENT: tl.constexpr):
        """The state of the union of two states (elementwise over equal or broadcastable shapes); `u` is
        carried only `WITH_ENT` (else ``u1`` is returned)."""
        m = tl.maximum(m1, m2)
        m_safe = tl.where(m == float("-inf"), 0.0, m)  # both empty: no -inf - -inf
        first = m1 >= m2
        e = tl.exp(tl.minimum(m1, m2) - m_safe)  # the smaller max's weight; the larger one's is exactly 1
        a1 = tl.where(first, 1.0, e)
        a2 = tl.where(first, e, 1.0)
        s = s1 * a1 + s2 * a2
        u = u1
        if WITH_ENT:
            # re-centre each u on the new max: sum e^(x-m)(x-m) = a * (u_i + (m_i - m) s_i)
            d1 = tl.where(m1 == float("-inf"), 0.0, m1 - m_safe)
            d2 = tl.where(m2 == float("-inf"), 0.0, m2 - m_safe)
            u = a1 * (u1 + d1 * s1) + a2 * (u2 + d2 * s2)
        return m, s, u

    @triton.jit
    def lse_reduce(m, s, u, AXIS: tl.constexpr, WITH_ENT: tl.constexpr):
        """The states along `AXIS` merged into one (per remaining index)."""
        mx = tl.max(m, axis=AXIS)
        mx_safe = tl.where(mx == float("-inf"), 0.0, mx)
        d = tl.where(m == float("-inf"), 0.0, m - tl.expand_dims(mx_safe, AXIS))
        k = tl.where(m == float("-inf"), 0.0, tl.exp(d))  # an empty lane adds nothing
        S = tl.sum(s * k, axis=AXIS)
        U = S
        if WITH_ENT:
            U = tl.sum(k * (u + d * s), axis=AXIS)
        return mx, S, U

    @triton.jit
    def row_logp(xb, tok, s_xv, V, inv_temp, WITH_ENT: tl.constexpr, BLOCK_V: tl.constexpr):
        """``(logp, lse, entropy)`` of one row of V logits at `xb` (stride `s_xv`) under ``softmax(x * inv_temp)``,
        streamed once over V in BLOCK_V lanes; ``logp = x[tok] * inv_temp - lse``, NaN when `tok` is outside
        [0, V). The entropy is 0 without `WITH_ENT`."""
        cols = tl.arange(0, BLOCK_V)
        m = tl.full([BLOCK_V], float("-inf"), tl.float32)
        s = tl.zeros([BLOCK_V], tl.float32)
        u = tl.zeros([BLOCK_V], tl.float32)
        for v0 in range(0, V, BLOCK_V):
            v = v0 + cols
            x = tl.load(xb + v * s_xv, mask=v < V, other=float("-inf")).to(tl.float32) * inv_temp
            m, s, u = lse_merge(m, s, u, x, 1.0, 0.0, WITH_ENT)
        mx, S, U = lse_reduce(m, s, u, 0, WITH_ENT)
        log_s = tl.log(S)
        lse = mx + log_s
        ent = 0.0
        if WITH_ENT:
            ent = log_s - U / S
        ok = (tok >= 0) & (tok < V)
        xt = tl.load(xb + tl.where(ok, tok, 0) * s_xv).to(tl.float32) * inv_temp
        return tl.where(ok, xt - lse, float("nan")), lse, ent
