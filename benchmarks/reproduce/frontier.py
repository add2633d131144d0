"""From the evaluations to the verdict, by the rule PREREGISTRATION.md fixed before any result existed.

A run's *curve* is its quality and tax at each checkpoint, starting from where it started (the cold start for
a continuation). On seed 0's **select** curves: each method's learning rate is the one whose curve reaches the
highest chrF (the lower rate on a tie), and the matched quality is

    q* = c0 + Q_FRACTION * (min(best GRPO chrF, best SFT-continuation chrF) - c0),   c0 = the cold start's chrF.

On every seed's **test** curves, a method's tax at q* is its Δ OOD NLL where its chrF first reaches q*
(linear interpolation between the two checkpoints around the crossing; the start's own tax when it starts at or
above q*; undefined when it never gets there). "GRPO pays less tax" holds only when every seed has both values
and the 95% t-interval of the paired differences (GRPO - SFT) lies wholly below 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

Q_FRACTION = 0.75
# Two-sided 95% quantiles of Student's t by degrees of freedom (standard tables).
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


@dataclass(frozen=True)
class Point:
    """One evaluated model of a curve."""

    name: str
    step: int
    chrf: float
    delta_nll: float
    kl: float
    similarity: float | None
    similarity_independent: float | None
    mean_length: float
    capped_share: float
    script_shift: float | None
    nll_renormalised: float | None
    bleu: float


def point(name: str, model: dict, base: dict, step: int) -> Point:
    """The numbers of one model of an eval.json (`models[name]`), Δ against that file's base."""
    task, ood = model["task"], model["ood"]
    split = ood.get("delta_nll_split") or {}
    sim = task.get("similarity") or {}
    independent = task.get("similarity_independent") or {}
    length = task.get("length") or {}
    return Point(name=name, step=step, chrf=task["chrf"], bleu=task["bleu"],
                 delta_nll=ood["nll"]["mean"] - base["ood"]["nll"]["mean"], kl=ood["kl"]["mean"],
                 similarity=sim.get("mean"), similarity_independent=independent.get("mean"),
                 mean_length=length.get("mean_tokens", math.nan), capped_share=length.get("capped_share", math.nan),
                 script_shift=split.get("script_shift"), nll_renormalised=split.get("nll_renormalised"))


def curve(eval_json: dict, *, start: str | None) -> list[Point]:
    """The checkpoints of the evaluated run (models named ``<stage>@<step>``), oldest first, after the model
    named `start` (the cold start, at step 0) when given."""
    models, base = eval_json["models"], eval_json["models"]["base"]
    points = [point(start, models[start], base, 0)] if start else []
    steps = sorted((int(name.rsplit("@", 1)[1]), name) for name in models if "@" in name)
    return points + [point(name, models[name], base, step) for step, name in steps]


def pick_rate(curves: dict[float, list[Point]]) -> float:
    """The learning-rate multiple whose curve reaches the highest chrF (the lower one on a tie)."""
    return max(sorted(curves), key=lambda lr: (max(p.chrf for p in curves[lr]), -lr))


def matched_quality(start_chrf: float, grpo: list[Point], sft: list[Point]) -> float | None:
    """q*, or None when one of the methods never rises above the start (there is no quality to match)."""
    reach = min(max(p.chrf for p in grpo), max(p.chrf for p in sft))
    if reach <= start_chrf:
        return None
    return start_chrf + Q_FRACTION * (reach - start_chrf)


def tax_at(points: list[Point], q: float) -> float | None:
    """Δ OOD NLL where the curve's chrF first reaches `q` (interpolated), or None if it never does."""
    if points[0].chrf >= q:
        return points[0].delta_nll
    for a, b in zip(points, points[1:]):
        if b.chrf >= q > a.chrf:
            t = (q - a.chrf) / (b.chrf - a.chrf)
            return a.delta_nll + t * (b.delta_nll - a.delta_nll)
    return None


def t_interval(values: list[float]) -> dict:
    """Mean and the 95% t-interval of `values` (no interval for fewer than 2)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return {"mean": mean, "low": None, "high": None, "n": n}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = T975.get(n - 1, 1.96) * sd / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n}


def verdict(q_star: float | None, per_seed: list[dict]) -> dict:
    """The matched section of results.json: per seed {seed, grpo, sft} (Δ OOD NLL at q*), the paired
    differences' interval, and `grpo_tax_lower` by the pre-registered rule."""
    complete = q_star is not None and per_seed and all(r["grpo"] is not None and r["sft"] is not None
                                                       for r in per_seed)
    out = {"q_star": q_star, "metric": "chrf", "q_fraction": Q_FRACTION, "per_seed": per_seed,
           "difference": None, "grpo_tax_lower": False}
    if not complete:
        out["reason"] = ("no matched quality: a method never rose above the cold start on select" if q_star is None
                         else "a method's test curve never reached q* in some seed")
        return out
    diff = t_interval([r["grpo"] - r["sft"] for r in per_seed])
    out["difference"] = diff
    out["grpo_tax_lower"] = diff["high"] is not None and diff["high"] < 0
    out["reason"] = ("the 95% interval of GRPO - SFT lies wholly below 0" if out["grpo_tax_lower"]
                     else "the 95% interval of GRPO - SFT does not lie wholly below 0" if diff["high"] is not None
                     else "one seed only: no interval")
    return out
