"""What a GRPO step trains on: the prompt order and the stream of batches drawn from it; the groups a step keeps
(dynamic sampling); the global batch's advantages and the completions the loss covers; and each micro-batch's share
of the global batch's loss.

The prompt order is a pure function of (seed, step), so every rank agrees on it and a resumed run continues at
exactly the same data position. The batch sizes (BatchPlan) are read from the DeepSpeed JSON by ds_config.py.

Dynamic sampling (grpo.dynamic_sampling) refills a step's flat groups with groups drawn from further prompts. A group
whose G completions all score the same has advantage 0 and teaches nothing (early in GRPO with the paper's reward,
many groups score R_sim = 0 and R_lang = 1 everywhere). DAPO, verl and OpenRLHF therefore sample more prompts until
the batch is full of informative groups. Here a step samples further rounds (each the next batch of the prompt order,
so every rank draws from the same order) until every rank holds its full number of informative groups, or
grpo.max_resample extra rounds are spent. Each rank keeps its own groups: no completions move between ranks. The
ranks decide together whether to run another round (one all-reduce per round), so they run the same number of
rounds, which ZeRO-3's collective generation needs. A rank then trains on its first informative groups in the order
drawn, topped up with the first flat ones when the rounds ran out: the batch keeps the shape every collective
expects, and the flat groups stay out of the loss (beta == 0) as usual.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch

from semgrpo import dist
from semgrpo.config import ConfigError, GRPOConfig
from semgrpo.data import Example
from semgrpo.dist import sum_across
from semgrpo.ops import LossOptions, group_advantages, zero_std_groups
from semgrpo.rollout import Rollout


@dataclass(frozen=True)
class BatchPlan:
    """How a step's completions are cut: per micro-batch, accumulation steps, ranks (from the DeepSpeed JSON)."""

    micro_batch: int  # sequences per forward/backward per rank
    grad_accum: int
    world_size: int

    @property
    def per_rank(self) -> int:
        return self.micro_batch * self.grad_accum

    @property
    def global_batch(self) -> int:
        return self.per_rank * self.world_size


class PromptOrder:
    """Epoch-wise permutation of example indices, identical on every rank, indexed by step."""

    def __init__(self, num_examples: int, *, prompts_per_step: int, seed: int):
        if num_examples < prompts_per_step:
            raise ConfigError(
                f"only {num_examples} training examples, fewer than the {prompts_per_step} prompts one step "
                "needs (global batch / group size); add data or lower the batch size"
            )
        self.num_examples = num_examples
        self.prompts_per_step = prompts_per_step
        self.seed = seed
        self.steps_per_epoch = num_examples // prompts_per_step  # the incomplete tail batch is dropped

    def total_steps(self, *, epochs: float, max_steps: int) -> int:
        return max_steps if max_steps > 0 else max(1, math.ceil(epochs * self.steps_per_epoch))

    def indices(self, step: int, *, rank: int, world_size: int) -> list[int]:
        """The example indices this rank trains on at `step` (0-based)."""
        epoch, offset = divmod(step, self.steps_per_epoch)
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
        batch = perm[offset * self.prompts_per_step : (offset + 1) * self.prompts_per_step]
        per_rank = self.prompts_per_step // world_size
        return batch[rank * per_rank : (rank + 1) * per_rank].tolist()


class PromptStream:
    """The prompt order read batch after batch: one batch per step, more with dynamic sampling.

    `position` counts the batches drawn so far (== steps taken without dynamic sampling); checkpoints store
    it, so a resumed run draws exactly the prompts the uninterrupted one would have.
    """

    def __init__(self, order: PromptOrder, examples: list, *, position: int):
        self.order, self.examples, self.position = order, examples, position

    def next_batch(self) -> list:
        """This rank's examples of the next batch of the order."""
        ids = self.order.indices(self.position, rank=dist.rank(), world_size=dist.world_size())
        self.position += 1
        return [self.examples[i] for i in ids]


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


# What a GRPO step reports from its loss, by name (loss first, then the stats of policy_loss_from_logps).
LOSS_STATS = ("loss", "kl", "clip_ratio_low", "clip_ratio_high", "clip_ratio_region", "entropy")


def loss_options(grpo: GRPOConfig) -> LossOptions:
    """The loss options of a run: the config keys of the same names (grpo.eps_low, grpo.loss_type, ...)."""
    return LossOptions(**{f.name: getattr(grpo, f.name) for f in dataclasses.fields(LossOptions)})


@dataclass(frozen=True)
class LossNormalizer:
    """Each micro-batch's weight in the loss of the global batch, so that a step's update is TRL's loss formula
    applied once to every rank's in-loss completions together, whatever the world size, accumulation and
    micro-batch sizes (and however unevenly skipped groups left the micro-batches).

    Notation: the global batch holds S in-loss completions b (`sequences`, over all ranks) with N completion
    tokens t in the loss (`tokens`; a truncated completion under grpo.mask_truncated_completions is in S with no
    tokens, as TRL keeps it in its batch with a zeroed mask), l_bt the per-token loss of the type (its
    surrogate times any importance weight, plus beta * KL) and L = grpo.max_completion_length. Every l_bt depends
    on its own completion only: the ratios, the sequence-level ratio of "sequence" importance sampling (a mean
    over the completion's own tokens), vespo's gamma weight (a function of the completion's own ratio) and the
    bias-corrected KL. So the global loss is a sum over completions, and what couples the micro-batches is the
    normaliser alone. TRL 1.16's formulas on the global batch, and the micro-batch's part of each:

      grpo, sapo : (1/S) sum_b mean_t l_bt.      A micro-batch of n rows computes (1/n) sum_{b in mb} mean_t l_bt;
                   times n/S it is its part.       share = rows / S
      luspo      : (1/S) sum_b sum_t l_bt.       Locally (1/n) sum_{b in mb} sum_t l_bt; share = rows / S
      dr_grpo    : sum_bt l_bt / (S * L).        Locally sum_{mb} l_bt / (n * L); share = rows / S
      bnpo       : sum_bt l_bt / N.              Locally sum_{mb} l_bt / n_t (its own n_t tokens);
                                                 share = tokens / N
      dapo, cispo, vespo : sum_bt l_bt / N (TRL divides by num_items_in_batch, the token count of the batch).
                   The micro-batch is given num_items_in_batch = N, so it already computes its part; share = 1

    `policy_loss_from_logps` returns the micro-batch's own version of the formula; `share` rescales it to its part
    of the global one. DeepSpeed then divides every backward by the accumulation steps and averages over ranks,
    which `ranks_times_accumulation` undoes. bnpo and dapo coincide here: in TRL they differ only in how they
    accumulate over micro-batches, and here the micro-batches always add up to the global batch.
    """

    loss_type: str
    sequences: int  # in-loss completions over all ranks
    tokens: float  # their completion tokens in the loss
    ranks_times_accumulation: int

    def share(self, *, rows: int, tokens: float) -> float:
        """Weight of a micro-batch of `rows` completions holding `tokens` completion tokens in the loss."""
        if self.loss_type in ("grpo", "sapo", "luspo", "dr_grpo"):  # means over the micro-batch's sequences
            return rows / self.sequences
        if self.loss_type == "bnpo":  # the micro-batch's token mean
            return tokens / self.tokens if self.tokens else 0.0
        return 1.0  # dapo, cispo, vespo: already divided by the global token count (num_items_in_batch)

    @property
    def num_items_in_batch(self) -> float | None:
        """What the token-sum types divide by: the global token count (None when there is none: a zero loss)."""
        return self.tokens or None


@dataclass
class GlobalBatch:
    """Step 4 of a GRPO step on this rank: what the loss covers in the global batch, and how it is cut."""

    advantages: torch.Tensor  # [n] this rank's completions (CPU)
    all_rewards: torch.Tensor  # [world * n] every rank's, in rank order
    all_lengths: torch.Tensor  # [world * n] completion tokens
    all_truncated: torch.Tensor  # [world * n] completions left out of the loss by grpo.mask_truncated_completions
    my_loss_tokens: torch.Tensor  # [n] completion tokens in the loss (0 for a masked truncated completion)
    group_std: torch.Tensor  # [world * n / G]
    informative: torch.Tensor  # [world * n / G] groups whose rewards differ
    norm: LossNormalizer
    micro_batches: list[torch.Tensor]  # this rank's in-loss rows, grad_accum parts (some may be empty)


def plan_global_batch(rewards: torch.Tensor, lengths: torch.Tensor, grpo: GRPOConfig, plan: BatchPlan, *,
                      truncated: torch.Tensor | None = None) -> GlobalBatch:
    """Advantages over the gathered global batch (as TRL computes them, so scale_rewards="batch" divides by the
    global std at any world size), and the completions the loss covers. A zero-variance group has advantage 0:
    with beta == 0 it adds no gradient and is left out (it would only dilute the others); with beta > 0 its KL
    still pulls, so every completion stays in, as in TRL. `truncated` completions (grpo.mask_truncated_completions)
    keep their place in the advantages and in the loss's sequence count, with no tokens in the loss (TRL's
    masking).

    Shape:
        rewards, lengths, truncated: [n] this rank's completions
    """
    n, rank = len(rewards), dist.rank()
    mine = slice(rank * n, (rank + 1) * n)
    cut = torch.zeros(n) if truncated is None else truncated.float()
    columns = [rewards.float(), lengths.float(), cut]
    gathered = dist.gather_cat(torch.stack([c.to(rewards.device) for c in columns], dim=1)).cpu()
    all_rewards, all_lengths, all_truncated = gathered[:, 0], gathered[:, 1], gathered[:, 2] != 0
    loss_tokens = torch.where(all_truncated, 0.0, all_lengths)
    advantages, group_std = group_advantages(all_rewards, grpo.group_size, scale=grpo.scale_rewards,
                                             eps=grpo.advantage_eps, return_group_std=True)
    informative = ~zero_std_groups(all_rewards, grpo.group_size)
    in_loss = informative.repeat_interleave(grpo.group_size)
    if grpo.beta > 0:
        in_loss = torch.ones_like(in_loss)
    norm = LossNormalizer(grpo.loss_type, sequences=int(in_loss.sum()), tokens=float(loss_tokens[in_loss].sum()),
                          ranks_times_accumulation=plan.world_size * plan.grad_accum)
    keep = in_loss[mine].nonzero().flatten()
    micro_batches = [torch.as_tensor(part, dtype=torch.long) for part in np.array_split(keep.numpy(), plan.grad_accum)]
    return GlobalBatch(advantages=advantages[mine], all_rewards=all_rewards, all_lengths=all_lengths,
                       all_truncated=all_truncated, my_loss_tokens=loss_tokens[mine], group_std=group_std,
                       informative=informative, norm=norm, micro_batches=micro_batches)
