""""Will it fit?": the GPU and host memory a run will need, estimated before any weight loads.

Rank 0 prints the plan once before the policy loads (`announce_plan`); `--plan-only` prints it without
starting a run. The model's shape comes from its config.json alone (the model is built on the meta
device), so a directory holding only config.json is enough.

What the rows count, per GPU unless said otherwise:

* parameters / gradients / optimizer states: DeepSpeed's mixed-precision convention per trainable parameter,
  2 B weight, 2 B gradient, 12 B optimizer (fp32 master copy + Adam m and v). fp32 runs count 4 B, 4 B and
  still 12 B: DeepSpeed's ZeRO optimizer keeps its own fp32 partition beside the module's weights even when
  those are fp32. Frozen weights (a LoRA run's base model) cost their weight bytes only. ZeRO-1 partitions
  the optimizer, ZeRO-2 also the gradients, ZeRO-3 also the weights; `offload_optimizer` moves the optimizer
  (and, from ZeRO-2 on, the gradient partitions) to the host, `offload_param` the ZeRO-3 weight shards.
* ZeRO buffers: what DeepSpeed's own estimator (`estimate_zero3_model_states_mem_needs`,
  `estimate_zero2_model_states_mem_needs`) counts beyond those rows, so that the model states of a
  full-parameter run equal its figure: under ZeRO-3 the largest layer gathered with its gradient (4 B per
  parameter of that layer) and 18 B per parameter where 2 + 2 + 12 makes 16; under ZeRO-2 the fp32 gradient
  partition (4 B). The estimators assume every parameter trains, so a LoRA run asks them about its adapters
  and adds the frozen weights. Where no estimator exists (ZeRO-0/1, fp32) the same rules are applied by hand.
* reference: a frozen copy of the policy, only for full-parameter GRPO with grpo.beta > 0 (a LoRA run's
  reference is its policy with the adapter disabled), partitioned like the policy.
* rollout: the transient peak of sampling: the gathered full weights (ZeRO-3 with grpo.gather_for_generation)
  plus the KV cache of one generation batch at full length.
* LM head (GRPO): the fused log-prob op on one micro-batch: its fp32 tiles and the completions' hidden states
  with their fp32 gradient; no [micro, length, vocab] term (semgrpo/fused_head.py).
* logits (SFT): one micro-batch of the loss, [micro, length, vocab] (see LOSS_FP32_BYTES).
* host: per node. The transient "model loading" row: under ZeRO-3 on several ranks the policy is created
  partitioned (`deepspeed.zero.Init`, semgrpo/partitioned.py), so a rank holds about one layer at a time;
  otherwise every rank reads the whole model with `from_pretrained` before DeepSpeed takes it.

Not counted: activations of the policy pass, the CUDA context, communication buckets, allocator fragmentation.

    shape.py   the model's shape from config.json       zero.py    what the DeepSpeed JSON says (ZeRO, offload)
    rows.py    the rows of a stage's plan                table.py   the table: rows, printing, the budget check
"""
from __future__ import annotations

import os

from semgrpo import dist
from semgrpo.config import Config, ConfigError
from semgrpo.memory_plan.rows import build_plan
from semgrpo.memory_plan.shape import ModelShape, model_shape
from semgrpo.memory_plan.table import GiB, MemoryPlan, MiB, Row, format_bytes, format_count
from semgrpo.memory_plan.zero import ZeroSetup, zero_setup

__all__ = [
    "GiB", "MemoryPlan", "MiB", "ModelShape", "Row", "ZeroSetup", "announce_plan", "build_plan", "format_bytes",
    "format_count", "gpu_budget", "model_shape", "nodes_from_env", "plan_for_config", "plan_lines", "zero_setup",
]
STAGES = ("grpo", "sft")


def plan_for_config(cfg: Config, *, world_size: int, ds_config: dict, dtype: str, num_nodes: int = 1,
                    stage: str = "grpo") -> MemoryPlan:
    """The memory plan of `stage` ("grpo" or "sft") for `cfg` on `world_size` GPUs over `num_nodes` nodes.

    Args:
        ds_config: the DeepSpeed JSON as `ds_config.load_ds_config` returns it (micro batch and accumulation
            filled in).
        dtype: the resolved model.dtype (bf16, fp16, fp32).

    Raises:
        ConfigError: model.path is not usable (see `model_shape`), or the world size and nodes do not divide.
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    if world_size < 1:
        raise ConfigError(f"the world size must be >= 1, got {world_size}")
    if num_nodes < 1 or world_size % num_nodes:
        raise ConfigError(f"{world_size} GPUs cannot be spread evenly over {num_nodes} nodes")
    shape = model_shape(cfg.model.path, cfg.model.lora)
    return build_plan(shape, zero_setup(ds_config, dtype), cfg, world_size=world_size, num_nodes=num_nodes,
                      stage=stage)


def gpu_budget(cfg: Config) -> tuple[int | None, str]:
    """(bytes per GPU or None, where it comes from): run.gpu_memory_gib when > 0, else the CUDA device's size."""
    if cfg.run.gpu_memory_gib > 0:
        return int(cfg.run.gpu_memory_gib * GiB), "run.gpu_memory_gib"
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        return int(props.total_memory), f"detected: {props.name}"
    return None, ""


def nodes_from_env(world_size: int) -> int:
    """Nodes of the launched job: DeepSpeed's launcher says CROSS_SIZE, torchrun LOCAL_WORLD_SIZE; else 1."""
    cross = os.environ.get("CROSS_SIZE", "")
    if cross.isdigit() and int(cross) >= 1 and world_size % int(cross) == 0:
        return int(cross)
    local = os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or ""
    if local.isdigit() and int(local) >= 1 and world_size % int(local) == 0:
        return world_size // int(local)
    return 1


def plan_lines(cfg: Config, *, world_size: int, ds_config: dict, dtype: str, num_nodes: int = 1,
               stage: str = "grpo") -> list[str]:
    """The table, the budget line and the warnings, ready to print. Raises as plan_for_config does."""
    plan = plan_for_config(cfg, world_size=world_size, ds_config=ds_config, dtype=dtype, num_nodes=num_nodes,
                           stage=stage)
    budget, source = gpu_budget(cfg)
    if budget:
        verdict = "fits" if plan.peak_gpu <= budget else "does NOT fit"
        budget_line = (f"  budget: {format_bytes(budget)} per GPU ({source}): the peak of "
                       f"{format_bytes(plan.peak_gpu)} {verdict}")
    else:
        budget_line = "  budget: none (no CUDA device; set run.gpu_memory_gib or --gpu-memory GIB to check one)"
    return [plan.format(), budget_line, *plan.check(budget)]


def announce_plan(cfg: Config, *, world_size: int, ds_config: dict, dtype: str, stage: str = "grpo",
                  num_nodes: int | None = None) -> None:
    """Rank 0 prints the memory plan, with a warning line per part that exceeds the GPU budget.

    Advice only: it never stops a run. A model whose shape cannot be worked out gets one line saying so; loading
    the model then reports the real problem.
    """
    if not dist.is_main():
        return
    try:
        lines = plan_lines(cfg, world_size=world_size, ds_config=ds_config, dtype=dtype, stage=stage,
                           num_nodes=num_nodes or nodes_from_env(world_size))
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        lines = [f"semgrpo: no memory plan ({first})"]
    for line in lines:
        print(line, flush=True)
