"""The DeepSpeed JSON of a run (`run.deepspeed`): read, checked, precision filled in, and the batch sizes it sets.

In GRPO the DeepSpeed micro batch counts *completions*: one optimizer step consumes `micro * grad_accum * world`
completions, i.e. that many / G prompts. Each rank owns whole groups, so `micro * grad_accum` must be a multiple of
G (`check_group_fit`). The JSON stays pure DeepSpeed: semgrpo builds the optimizer and the schedule from the config.
"""
from __future__ import annotations

import json
from pathlib import Path

from semgrpo.batching import BatchPlan
from semgrpo.config import ConfigError


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
