"""Build a single-process DeepSpeed engine on CPU (gloo) for tests.

`init_single_process()` fakes the launcher's environment (rank 0 of 1, a free local port) and calls
`deepspeed.init_distributed("gloo")`; calling it again in the same process is a no-op.
"""
from __future__ import annotations

import os
import socket
from typing import Any


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_single_process() -> None:
    """Initialise a one-rank gloo process group unless one already exists."""
    import deepspeed
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return
    os.environ.update(
        RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port())
    )
    deepspeed.init_distributed(dist_backend="gloo")


def ds_config(*, stage: int, lr: float = 1e-2, micro_batch: int = 2, grad_accum: int = 1,
              scheduler: bool = True) -> dict[str, Any]:
    """A small fp32 DeepSpeed config with AdamW (torch implementation) and a WarmupLR scheduler."""
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"stage={stage!r}; expected 0, 1, 2 or 3")
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "steps_per_print": 10**9,
        "optimizer": {"type": "AdamW", "params": {"lr": lr, "weight_decay": 0.01, "torch_adam": True}},
        "zero_optimization": {"stage": stage},
        "zero_allow_untested_optimizer": True,
    }
    if stage == 3:
        cfg["zero_optimization"].update(stage3_param_persistence_threshold=0)
    if scheduler:
        cfg["scheduler"] = {
            "type": "WarmupLR",
            "params": {"warmup_min_lr": 0.0, "warmup_max_lr": lr, "warmup_num_steps": 10},
        }
    return cfg


def make_engine(model, config: dict[str, Any]):
    """Wrap `model` (already built, under `zero.Init` or not) in a DeepSpeed engine; returns the engine."""
    import deepspeed

    init_single_process()
    params = [p for p in model.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(model=model, model_parameters=params, config=config)
    return engine
