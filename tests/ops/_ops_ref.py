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


def trl_grpo_loss_ref(logits, ids, mask, adv, old=None, ref=None, *, temperature=1.0, eps_low=0.2, eps_high=0.2,
                      beta=0.0, loss_type="grpo", importance_sampling_level="token", delta=None,
                      use_bias_correction_kl=False, vllm_is_ratio=None, max_completion_length=None,
                      num_items_in_batch=None, sapo_temperature_pos=1.0, sapo_temperature_neg=1.05,
                      vespo_k_pos=2.0, vespo_lambda_pos=3.0, vespo_k_neg=3.0, vespo_lambda_neg=2.0):
    """TRL 1.16 ``GRPOTrainer._compute_loss`` re-derived in float64 on materialised logits (one process, eval-mode
    normalisers, no entropy bonus / entropy mask / off-policy mask). KL is also reported when beta == 0 but ref
    is given (semgrpo's convention). Returns (loss, stats) with the same stat names as semgrpo."""
    B, T, V = logits.shape
    lsm = torch.log_softmax(logits.double() / temperature, dim=-1)
    logp = lsm.gather(-1, ids.long()[..., None])[..., 0]
    entropy = -(lsm.exp() * lsm).sum(-1)
    m = mask.double()
    A = adv.double()
    A = A[:, None] if A.dim() == 1 else A
    old = logp.detach() if old is None else old.double()
    log_ratio = logp - old
    if importance_sampling_level == "token":
        log_iw = log_ratio
    else:  # GSPO: one ratio per sequence from the mean token log-ratio
        log_iw = ((log_ratio * m).sum(-1) / m.sum(-1).clamp(min=1.0))[:, None]
    ratio = torch.exp(log_iw)
    kl = None
    if ref is not None:
        diff = ref.double() - logp
        kl = torch.exp(diff) - diff - 1
        if use_bias_correction_kl:
            kl = kl * ratio
    stats = {}
    clipped = None
    if loss_type == "cispo":
        per = -torch.clamp(ratio, max=eps_high).detach() * A * logp
        clipped = (None, (ratio > eps_high) & (A > 0))
    elif loss_type == "sapo":
        tau = torch.where(A > 0, torch.full_like(A, sapo_temperature_pos), torch.full_like(A, sapo_temperature_neg))
        per = -torch.sigmoid(tau * (ratio - 1)) * 4 / tau * A
    elif loss_type == "vespo":
        with torch.no_grad():
            floor = math.log(1e-8)
            seq = (log_ratio.detach().clamp(-20.0, 20.0) * m).sum(-1, keepdim=True)
            if vllm_is_ratio is not None:  # TRL sums the log IS ratio over every position
                seq = seq + torch.log(vllm_is_ratio.double()).clamp(floor, 20.0).sum(-1, keepdim=True)
            lw = seq.clamp(floor, 20.0)
            pos = A >= 0
            k = torch.where(pos, torch.full_like(A, vespo_k_pos), torch.full_like(A, vespo_k_neg))
            lam = torch.where(pos, torch.full_like(A, vespo_lambda_pos), torch.full_like(A, vespo_lambda_neg))
            lam = lam.clamp(min=1e-4)
            phi = torch.exp(lam + k * lw - lam * torch.exp(lw)).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)
        per = -phi * A * logp
        stats["vespo_phi_seq_mean"] = phi
    else:
        ratio2 = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
        r1 = ratio if delta is None else torch.clamp(ratio, max=delta)
        per = -torch.min(r1 * A, ratio2 * A)
        clipped = ((r1 < 1 - eps_low) & (A < 0), (r1 > 1 + eps_high) & (A > 0))
    if vllm_is_ratio is not None and loss_type != "vespo":
        per = per * vllm_is_ratio.double()
    if kl is not None and beta != 0.0:
        per = per + beta * kl
    if loss_type in ("grpo", "sapo"):
        loss = ((per * m).sum(-1) / m.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = (per * m).sum() / m.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":
        loss = (per * m).sum() / (B * (max_completion_length or T))
    elif loss_type == "luspo":
        loss = (per * m).sum(-1).mean()
    else:  # dapo, cispo, vespo
        n = m.sum().clamp(min=1.0) if num_items_in_batch is None else float(num_items_in_batch)
        loss = (per * m).sum() / n

    def logged_mean(x):  # TRL's global_masked_mean on one process
        x = x.detach().double()
        if x.shape[1] == 1:
            return (x.sum() / x.shape[0]).item()
        return ((x * m).sum() / m.sum().clamp(min=1.0)).item()

    out = {"kl": logged_mean(kl) if kl is not None else 0.0, "entropy": logged_mean(entropy)}
    if "vespo_phi_seq_mean" in stats:
        out["vespo_phi_seq_mean"] = logged_mean(stats["vespo_phi_seq_mean"])
    low, high = clipped if clipped is not None else (None, None)
    out["clip_ratio_low"] = logged_mean(low.double()) if low is not None else 0.0
    out["clip_ratio_high"] = logged_mean(high.double()) if high is not None else 0.0
    region = high if low is None else (low | high)
    out["clip_ratio_region"] = logged_mean(region.double()) if region is not None else 0.0
    return loss, out
