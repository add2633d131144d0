"""tau of R_sim (paper eq. 2): the semantic adequacy the cold-start policy already reaches.

Measured as the mean raw cosine similarity between the policy's greedy outputs and the references on
the first `reward.tau_samples` dev prompts (train prompts when no dev set is given), split over ranks.
"""
from __future__ import annotations

import torch

from semgrpo.dist import rank_share, sum_across
from semgrpo.rollout import generate, generation_model, needs_synced_generation


def measure_tau(engine, tokenizer, examples, similarity, *, eos_ids: list[int], gather: bool,
                max_new_tokens: int, batch_size: int) -> float:
    """tau from the policy's greedy outputs on `examples` (split over ranks), scored by `similarity`
    (`SemanticSimilarity.similarity`: completions, references -> raw cosines)."""
    # Every rank generates the same number of prompts (padding with repeats) so ZeRO-3 gathers match.
    mine, weight = rank_share(examples)
    with generation_model(engine, gather=gather) as model:
        rollout = generate(model, [ex.prompt_ids for ex in mine], device=engine.device,
                           pad_id=tokenizer.pad_token_id, eos_ids=eos_ids, max_new_tokens=max_new_tokens,
                           temperature=1.0, top_p=1.0, greedy=True, batch_size=batch_size,
                           synced_gpus=needs_synced_generation(engine, gather=gather))
    completions = tokenizer.batch_decode(rollout.completion_ids, skip_special_tokens=True)
    sim = similarity(completions, [ex.reference for ex in mine])[:weight]
    total = sum_across(torch.tensor([sim.sum().item(), float(weight)], dtype=torch.float64))
    return clamp_tau(float(total[0] / total[1]))


# Upper cap: a policy already at similarity 1 has nothing left to learn, and (s - tau) / (1 - tau) grows by
# 1 / (1 - tau), so 0.99 bounds that factor at 100.
TAU_MAX = 0.99


def clamp_tau(mean_similarity: float) -> float:
    """tau from the measured mean cosine, clamped to [0, TAU_MAX].

    tau must lie in [0, 1). Below 1, because R_sim = (s - tau) / (1 - tau) divides by 1 - tau (zero at 1, and
    past 1 it would flip the reward's sign). At least 0, because a cosine at or below 0 means the output says
    nothing of the reference (or the opposite); a negative mean (possible when the cold-start policy is poor)
    would reward such outputs. At tau = 0, R_sim is simply the positive part of the cosine.

    Raises:
        ValueError: on NaN, which means no similarity was measured (no samples, or NaN embeddings).
    """
    import math

    if math.isnan(mean_similarity):
        raise ValueError("tau=auto: the mean similarity is NaN, so no similarity was measured (no samples, or the "
                         "encoder gave NaN embeddings); set reward.tau to a number or check reward.tau_samples")
    return min(max(mean_similarity, 0.0), TAU_MAX)
