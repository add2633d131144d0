"""Batch sizes from the DeepSpeed JSON, cross-checked against GRPO's group size; the prompt order and the
stream of batches drawn from it; and each micro-batch's share of the global batch's loss.

In GRPO the DeepSpeed micro batch counts *completions*: one optimizer step consumes
`micro * grad_accum * world` completions, i.e. that many / G prompts. Each rank owns whole groups, so
`micro * grad_accum` must be a multiple of G. The prompt order is a pure function of (seed, step), so
every rank agrees on it and a resumed run continues at exactly the same data position.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from semgrpo import dist
from semgrpo.config import ConfigError, GRPOConfig
from semgrpo.ops import TRL_LOSS_TYPES, LossOptions, group_advantages, zero_std_groups


@dataclass(frozen=True)
class BatchPlan:
    micro_batch: int  # sequences per forward/backward per rank
    grad_accum: int
    world_size: int

    @property
    def per_rank(self) -> int:
        return self.micro_batch * self.grad_accum

    @property
    def global_batch(self) -> int:
        return self.per_rank * self.world_size


def load_ds_config(path: str | Path, *, dtype: str, world_size: int) -> tuple[dict, BatchPlan]:
    """Read a DeepSpeed JSON, fill in precision from `dtype` when it says nothing, check batch sizes."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"DeepSpeed config not found: {path}")
    try:
        ds = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start + 1})") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(ds, dict):
        raise ConfigError(f"{path}: expected a JSON object at the top level, got {type(ds).__name__}")
    _check_ds_sections(ds, path)
    if "optimizer" in ds or "scheduler" in ds:
        raise ConfigError(
            f"{path}: remove the 'optimizer'/'scheduler' sections; semgrpo builds AdamW and the schedule "
            "from grpo.lr / grpo.scheduler (and sft.*) so that both stages are configured in one place"
        )
    micro = ds.get("train_micro_batch_size_per_gpu")
    accum = ds.get("gradient_accumulation_steps", 1)
    total = ds.get("train_batch_size")
    for name, value in (("train_micro_batch_size_per_gpu", micro), ("gradient_accumulation_steps", accum),
                        ("train_batch_size", total)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ConfigError(f"{path}: {name} must be a positive integer, got {value!r}")
    if micro is None and total is None:
        raise ConfigError(f"{path}: set train_micro_batch_size_per_gpu (and gradient_accumulation_steps)")
    if micro is None:
        micro = total // (accum * world_size)
    if "gradient_accumulation_steps" not in ds and total is not None:
        accum = total // (micro * world_size)
    for name, value in (("train_micro_batch_size_per_gpu", micro), ("gradient_accumulation_steps", accum)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{path}: {name} must be a positive integer, got {value!r}")
    if total is not None and total != micro * accum * world_size:
        raise ConfigError(
            f"{path}: train_batch_size {total} != train_micro_batch_size_per_gpu {micro} x "
            f"gradient_accumulation_steps {accum} x {world_size} ranks"
        )
    ds = dict(ds, train_micro_batch_size_per_gpu=micro, gradient_accumulation_steps=accum)
    ds.pop("train_batch_size", None)
    if ds.get("fp16", {}).get("enabled") and not _cuda_available():
        raise ConfigError(f"{path}: fp16.enabled needs a CUDA device and none is available; set it to false "
                          "to train on the CPU")
    if not any(k in ds for k in ("bf16", "fp16")):
        if dtype == "fp16" and not _cuda_available():
            raise ConfigError("model.dtype fp16 needs a CUDA device and none is available; use fp32 or auto")
        ds["bf16"] = {"enabled": dtype == "bf16"}
        ds["fp16"] = {"enabled": dtype == "fp16"}
    return ds, BatchPlan(micro_batch=micro, grad_accum=accum, world_size=world_size)


def _check_ds_sections(ds: dict, path: Path) -> None:
    """The sections semgrpo reads or fills in must have the shape DeepSpeed expects."""
    for name in ("zero_optimization", "fp16", "bf16"):
        if name in ds and not isinstance(ds[name], dict):
            raise ConfigError(f"{path}: {name} must be a JSON object, got {type(ds[name]).__name__}")
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2, 3) or isinstance(stage, bool):
        raise ConfigError(f"{path}: zero_optimization.stage must be 0, 1, 2 or 3, got {stage!r}")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def check_group_fit(plan: BatchPlan, group_size: int, ds_path: str) -> int:
    """Prompts per rank per step; a clear error when groups would straddle micro-batches or ranks."""
    if plan.per_rank % group_size:
        raise ConfigError(
            f"{ds_path}: train_micro_batch_size_per_gpu x gradient_accumulation_steps = {plan.per_rank} "
            f"completions per rank is not a multiple of grpo.group_size {group_size}; "
            "each rank must hold whole groups"
        )
    return plan.per_rank // group_size


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


# What a GRPO step reports from its loss, by name (loss first, then the stats of policy_loss_from_logps).
LOSS_STATS = ("loss", "kl", "clip_ratio_low", "clip_ratio_high", "clip_ratio_region", "entropy")


# The aggregations LossNormalizer splits over ranks and micro-batches: every loss type of the ops.
TRAINER_LOSS_TYPES = TRL_LOSS_TYPES


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
