"""Driver for tests/test_export.py, run under `deepspeed --num_gpus 2` (two gloo ranks on CPU).

    deepspeed --num_gpus 2 tests/_export_runs.py ROOT

ROOT holds the DeepSpeed JSONs the test wrote (zero3.json with every parameter partitioned, zero2.json,
zero0.json). The driver trains real runs with the project's SFT trainer (`semgrpo.sft.train_sft`, what
bin/train_sft.py runs), then, independently of the export code, rebuilds each run's engine from scratch
(`load_policy` + `build_engine`), restores its newest checkpoint with `load_checkpoint` and computes the
logits of fixed inputs on the gathered parameters. Rank 0 writes `ROOT/<run>.ref.pt` for each.

Runs (tiny: 16 samples, 2 steps of 8):
    lora1   LoRA r=4 on q_proj, v_proj, ZeRO-3
    lora2   LoRA r=2 on q_proj, k_proj, down_proj, model.init_from=lora1, ZeRO-3
    full3   full parameters (model.lora.enabled=false), ZeRO-3, every parameter partitioned
    full2   full parameters, ZeRO-2
    full0   full parameters, no ZeRO (stage 0)
"""
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from semgrpo import dist
from semgrpo.checkpoint import find_latest_checkpoint, load_checkpoint
from semgrpo.cli import DEMO_CONFIG
from semgrpo.config import load_config
from semgrpo.errors import leave_process_group
from semgrpo.modeling import build_engine, load_policy, resolve_dtype
from semgrpo.session import apply_demo, init_distributed, seed_everything
from semgrpo.sft import train_sft

ROOT = Path(next(a for a in sys.argv[1:] if not a.startswith("--local")))  # the launcher adds --local_rank
COMMON = ["sft.samples=16", "sft.epochs=1", "sft.warmup_ratio=0.0", "sft.scheduler=constant",
          "grpo.merge_adapter_for_generation=false", "model.lora.dropout=0.0", "run.save_every=1"]
RUNS = {
    "lora1": ["run.deepspeed={root}/zero3.json", "sft.lr=2e-2", "model.lora.r=4", "model.lora.alpha=8",
              "model.lora.target_modules=[q_proj,v_proj]"],
    "lora2": ["run.deepspeed={root}/zero3.json", "sft.lr=2e-2", "model.lora.r=2", "model.lora.alpha=8",
              "model.lora.target_modules=[q_proj,k_proj,down_proj]", "model.init_from={root}/lora1"],
    "full3": ["run.deepspeed={root}/zero3.json", "sft.lr=3e-3", "model.lora.enabled=false"],
    "full2": ["run.deepspeed={root}/zero2.json", "sft.lr=3e-3", "model.lora.enabled=false"],
    "full0": ["run.deepspeed={root}/zero0.json", "sft.lr=3e-3", "model.lora.enabled=false"],
}
REFERENCES = ("lora2", "full3", "full2", "full0")
IDS = torch.randint(1, 764, (2, 12), generator=torch.Generator().manual_seed(7))


def config(name: str):
    overrides = [f"output_dir={ROOT / name}", *COMMON, *(o.format(root=ROOT) for o in RUNS[name])]
    return load_config([DEMO_CONFIG], overrides)


def reference(name: str) -> None:
    """The trained policy's logits, from a fresh engine restored with the project's own checkpoint code."""
    cfg = config(name)
    apply_demo(cfg)
    dtype = resolve_dtype(cfg.model.dtype)
    from semgrpo.ds_config import load_ds_config

    ds_config, _ = load_ds_config(cfg.run.deepspeed, dtype=dtype, world_size=dist.world_size())
    seed_everything(cfg.seed)
    engine = build_engine(load_policy(cfg.model, dtype=dtype), ds_config, lr=cfg.sft.lr,
                          weight_decay=cfg.run.weight_decay, scheduler=cfg.sft.scheduler, warmup_ratio=0.0,
                          total_updates=2)
    checkpoint = find_latest_checkpoint(cfg.output_dir)
    load_checkpoint(engine, checkpoint)
    engine.module.eval()
    stage = engine.zero_optimization_stage()
    # ZeRO-3: how much of each parameter this rank holds (all of it would mean nothing was partitioned).
    shards = {n: [p.ds_tensor.numel(), p.ds_numel] for n, p in engine.module.named_parameters()} if stage == 3 else {}
    with torch.no_grad():
        if stage == 3:
            from deepspeed.runtime.zero.stage3 import unwrap_model_for_generation

            with unwrap_model_for_generation(engine):  # GatheredParameters over every parameter, hooks off
                logits = engine.module(input_ids=IDS).logits
        else:
            logits = engine.module(input_ids=IDS).logits
    if dist.is_main():
        torch.save({"input_ids": IDS, "logits": logits.float().cpu(), "checkpoint": str(checkpoint),
                    "zero_stage": int(stage), "world_size": dist.world_size(), "shards": shards},
                   ROOT / f"{name}.ref.pt")
    dist.barrier()


def main() -> int:
    init_distributed()
    for name in RUNS:
        start = time.perf_counter()
        summary = train_sft(config(name))
        if dist.is_main():
            print(f"_export_runs: trained {name} in {time.perf_counter() - start:.1f} s: "
                  f"{json.dumps(summary, default=str)}", flush=True)
    for name in REFERENCES:
        start = time.perf_counter()
        reference(name)
        if dist.is_main():
            print(f"_export_runs: reference logits of {name} in {time.perf_counter() - start:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    status = main()
    dist.barrier()
    leave_process_group()  # a gloo group alive at exit can abort the process ("terminate called ...")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # every run is saved and closed: skip the interpreter's slow teardown (seconds per rank)
