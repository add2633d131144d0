"""Naive fp32 references for the ops tests: full log_softmax, explicit loops, no shared code."""

import math

import torch


def naive_logps(logits, ids, temperature=1.0):
    lsm = torch.log_softmax(logits.double() / temperature, dim=-1)
    return lsm.gather(-1, ids.long()[..., None])[..., 0]


def naive_grpo_loss(logits, ids, mask, adv, old=None, ref=None, *, temperature=1.0, eps_low=0.2,
                    eps_high=0.2, beta=0.0, loss_type="grpo", max_completion_length=None,
                    num_items_in_batch=None):
    """Per-row loop in float64; returns (loss, kl_mean, low, high, region)."""
    B, T, V = logits.shape
    logp = naive_logps(logits, ids, temperature)
    A = adv.double()
    A = A[:, None].expand(B, T) if A.dim() == 1 else A
    m = mask.double()
    o = logp.detach() if old is None else old.double()
    ratio = torch.exp(logp - o)
    per = -torch.min(ratio * A, torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * A)
    kl = torch.zeros_like(per)
    if ref is not None:
        d = ref.double() - logp
        kl = torch.exp(d) - d - 1
        per = per + beta * kl
    rows = []
    total = 0.0
    for b in range(B):
        s = sum(per[b, t] * m[b, t] for t in range(T) if m[b, t] != 0) if m[b].sum() > 0 else per.new_zeros(())
        rows.append(s / max(float(m[b].sum()), 1.0))
        total = total + s
    if loss_type == "grpo":
        loss = sum(rows) / B
    elif loss_type == "bnpo":
        loss = total / max(float(m.sum()), 1.0)
    elif loss_type == "dr_grpo":
        loss = total / (B * (max_completion_length or T))
    else:
        loss = total / (float(m.sum()) if num_items_in_batch is None else float(num_items_in_batch))
    n = max(float(m.sum()), 1.0)
    on = m != 0
    r = ratio.detach()
    low = ((r < 1 - eps_low) & (A < 0) & on).sum().item() / n
    high = ((r > 1 + eps_high) & (A > 0) & on).sum().item() / n
    klm = (kl.detach() * m).sum().item() / n if ref is not None else 0.0
    return loss, klm, low, high, low + high


def naive_advantages(rewards, G, scale="group", eps=1e-4):
    """Python-float loops over groups."""
    vals = [float(x) for x in rewards]
    valid_all = [v for v in vals if not math.isnan(v)]

    def std(xs):
        if len(xs) < 2:
            return 0.0
        mu = sum(xs) / len(xs)
        return math.sqrt(sum((x - mu) ** 2 for x in xs) / (len(xs) - 1))

    out = []
    for g in range(len(vals) // G):
        grp = vals[g * G : (g + 1) * G]
        ok = [v for v in grp if not math.isnan(v)]
        flat = len(ok) < 2 or max(ok) == min(ok)
        mu = sum(ok) / len(ok) if ok else 0.0
        den = {"group": std(ok) + eps, "batch": std(valid_all) + eps, "none": 1.0}[scale]
        out += [0.0 if (flat or math.isnan(v)) else (v - mu) / den for v in grp]
    return torch.tensor(out, dtype=torch.float64)
