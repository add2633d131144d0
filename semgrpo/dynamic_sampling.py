"""Dynamic sampling: refill a step's flat groups with groups drawn from further prompts.

A group whose G completions all score the same has advantage 0 and teaches nothing (early in GRPO with the
paper's reward, many groups score R_sim = 0 and R_lang = 1 everywhere). DAPO, verl and OpenRLHF therefore
sample more prompts until the batch is full of informative groups. Here, with `grpo.dynamic_sampling`, a step
samples further rounds (each the next batch of the prompt order, so every rank draws from the same order)
until every rank holds its full number of informative groups, or `grpo.max_resample` extra rounds are spent.

Each rank keeps its own groups: no completions move between ranks. The ranks decide together whether to run
another round (one all-reduce per round), so they run the same number of rounds, which ZeRO-3's collective
generation needs. A rank then trains on its first informative groups in the order drawn, topped up with the
first flat ones when the rounds ran out: the batch keeps the shape every collective expects, and the flat
groups stay out of the loss (beta == 0) as usual.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from semgrpo.data import Example
from semgrpo.dist import sum_across
from semgrpo.ops import zero_std_groups
from semgrpo.rollout import Rollout


@dataclass
class ScoredGroups:
    """One rank's sampled and scored groups: G rows per prompt, groups contiguous.

    Shape:
        rollout: N = len(examples) * G rows; rewards and each per_fn value: [N]
    """

    examples: list[Example]  # one per group
    rollout: Rollout
    completions: list[str]
    rewards: torch.Tensor
    per_fn: dict[str, torch.Tensor]

    def informative(self, group_size: int) -> torch.Tensor:
        """[groups] True where the group's rewards differ."""
        return ~zero_std_groups(self.rewards.float(), group_size).cpu()

    def groups(self, indices: list[int], group_size: int) -> ScoredGroups:
        """The groups at `indices`, in that order."""
        rows = [g * group_size + j for g in indices for j in range(group_size)]
        index = torch.tensor(rows, dtype=torch.long)
        return ScoredGroups([self.examples[g] for g in indices], self.rollout.select(index),
                            [self.completions[r] for r in rows], self.rewards[index.to(self.rewards.device)],
                            {k: v[index.to(v.device)] for k, v in self.per_fn.items()})


def needs_another_round(rounds: list[ScoredGroups], *, group_size: int, max_resample: int) -> bool:
    """Collective: True while some rank lacks its full number of informative groups and rounds remain."""
    if len(rounds) > max_resample:
        return False
    wanted = len(rounds[0].examples)
    have = sum(int(r.informative(group_size).sum()) for r in rounds)
    return sum_across(torch.tensor([float(have < wanted)])).item() > 0


def keep_informative(rounds: list[ScoredGroups], *, group_size: int, pad_id: int) -> ScoredGroups:
    """This rank's batch of the step: its first informative groups in the order drawn, as many as one round
    holds, topped up with its first flat groups when there are too few."""
    if len(rounds) == 1:  # one round: every group it drew, as drawn (no copy on the usual path)
        return rounds[0]
    wanted = len(rounds[0].examples)
    marks = [(i, g, bool(ok)) for i, r in enumerate(rounds) for g, ok in enumerate(r.informative(group_size))]
    chosen = sorted(([(i, g) for i, g, ok in marks if ok] + [(i, g) for i, g, ok in marks if not ok])[:wanted])
    parts = [rounds[i].groups([g for j, g in chosen if j == i], group_size) for i in range(len(rounds))]
    parts = [p for p in parts if p.examples]
    return ScoredGroups([ex for p in parts for ex in p.examples],
                        Rollout.cat([p.rollout for p in parts], pad_id=pad_id),
                        [c for p in parts for c in p.completions],
                        torch.cat([p.rewards for p in parts]),
                        {k: torch.cat([p.per_fn[k] for p in parts]) for k in parts[0].per_fn})
