"""tau of R_sim (paper eq. 2): the semantic adequacy the cold-start policy already reaches.

Measured as the mean raw cosine similarity between the policy's greedy outputs and the references on
the first `reward.tau_samples` dev prompts (train prompts when no dev set is given), split over ranks.
"""
from __future__ import annotations

import torch

from semgrpo import dist
from semgrpo.collectives import sum_across
from semgrpo.rollout import generate, generation_model, needs_synced_generation


def measure_tau(run, cfg) -> float:
    examples = (run.setup.dev or run.setup.train)[: cfg.reward.tau_samples]
    # Every rank generates the same number of prompts (padding with repeats) so ZeRO-3 gathers match.
    per_rank = -(-len(examples) // dist.world_size())
    mine = examples[dist.rank() * per_rank:(dist.rank() + 1) * per_rank]
    weight = len(mine)
    mine = mine or examples[:1]
    mine = mine + [mine[-1]] * (per_rank - len(mine))
    tok = run.setup.tokenizer
    gather = cfg.grpo.gather_for_generation
    with generation_model(run.engine, gather=gather) as model:
        rollout = generate(model, [ex.prompt_ids for ex in mine], device=run.engine.device, pad_id=tok.pad_token_id,
                           eos_ids=run.eos, max_new_tokens=cfg.grpo.max_completion_length, temperature=1.0,
                           top_p=1.0, greedy=True, batch_size=cfg.grpo.generation_batch_size,
                           synced_gpus=needs_synced_generation(run.engine, gather=gather))
    completions = tok.batch_decode(rollout.completion_ids, skip_special_tokens=True)
    sim = run.rewards["semantic"].similarity(completions, [ex.reference for ex in mine])[:weight]
    total = sum_across(torch.tensor([sim.sum().item(), float(weight)], dtype=torch.float64))
    tau = float(total[0] / total[1])
    # tau must stay below 1 for the rescale (s - tau) / (1 - tau); a policy already at 1 has nothing to learn.
    return min(tau, 0.99)
