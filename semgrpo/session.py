"""Everything a run needs before its first step, shared by SFT and GRPO.

Order matters for users: every path, key and batch size is checked before anything is written to
`output_dir`, so a typo never damages an existing run. The run folder itself (lock, fresh/overwrite/
resume, what a resume may change, the recorded config) is semgrpo/run_folder.py.
"""
from __future__ import annotations

import logging
import os
import random
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from semgrpo import dist
from semgrpo.batching import BatchPlan
from semgrpo.config import Config, ConfigError, DataConfig
from semgrpo.data import Example, build_examples, load_records
from semgrpo.data_root import check_data_paths
from semgrpo.ds_config import load_ds_config
from semgrpo.modeling import check_model_source, load_tokenizer, resolve_dtype
from semgrpo.prompts import TaskSpec, get_task


@dataclass
class RunSetup:
    cfg: Config
    task: TaskSpec
    tokenizer: object
    train: list[Example]
    dev: list[Example]
    ds_config: dict
    plan: BatchPlan
    dtype: str


def init_distributed() -> None:
    """Join the process group DeepSpeed's launcher set up, or make a one-process group for `python ...`."""
    if "RANK" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", str(port)))
    import deepspeed
    from deepspeed.utils import logger as ds_logger

    ds_logger.setLevel(logging.WARNING)
    if not torch.distributed.is_initialized():
        # NCCL has no CPU backend; the step's counts and metrics are CPU tensors (dist.py).
        deepspeed.init_distributed(dist_backend=DIST_BACKEND_CUDA if torch.cuda.is_available() else "gloo")
    check_cpu_backend()
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))


DIST_BACKEND_CUDA = "cpu:gloo,cuda:nccl"


def check_cpu_backend() -> None:
    """A process group initialised before us (by another launcher) must also serve CPU tensors."""
    config = torch.distributed.get_backend_config()
    if "cpu" not in {part.split(":")[0] for part in config.split(",")} and ":" in config:
        raise ConfigError(
            f"torch.distributed was initialised with backend {config!r}, which has no CPU backend; "
            f"semgrpo's step reduces CPU tensors: initialise it with backend={DIST_BACKEND_CUDA!r}, "
            "or leave the initialisation to semgrpo"
        )


def seed_everything(seed: int) -> None:
    """Same seed for the model init on every rank; per-rank offsets for sampling come from the seed too."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - libraries draw from the global state
    torch.manual_seed(seed)


def apply_demo(cfg: Config) -> None:
    """Fill model/data/encoder paths and the task from the offline demo assets (built once, cached).

    The demo of `demo.language` from `demo.source` (the Tibetan demo by default) translates with the task
    ``mt_<source>_<language>``: `data.task` becomes it unless it names that pair already (either direction);
    another task is an error, since the demo's records hold only those two languages.

    Idempotent: the run folder's checks fill the paths before `prepare` runs, so a second call does nothing
    (no second cache check, barrier or log line).
    """
    from semgrpo.demo.assets import build_demo, cached_demo
    from semgrpo.demo.cldr import check_pair, cldr_pairs

    language, source = cfg.demo.language, cfg.demo.source
    check_pair(language, source)  # a DemoError (a UserError) on every rank
    forward, backward = f"mt_{source}_{language}", f"mt_{language}_{source}"
    if cfg.data.task not in (forward, backward):
        if cfg.data.task != DataConfig.task:  # the default (and configs/demo.yaml's): the Tibetan demo's task
            raise ConfigError(f"data.task {cfg.data.task!r} does not fit the demo's pairs ({language} and {source}): "
                              f"leave it at {DataConfig.task} or give {forward} or {backward}")
        cfg.data.task = forward
    filled = (cfg.model.path, cfg.model.tokenizer, cfg.data.train, cfg.data.dev, cfg.reward.encoder,
              cfg.tax_meter.ood_passages)
    if all(filled):
        return
    assets = cached_demo(seed=cfg.seed, language=language, source=source)
    if assets is None:
        cldr_pairs(language, source)  # too few pairs: the same error on every rank, before rank 0 builds alone
        if dist.is_main():
            assets = build_demo(seed=cfg.seed, language=language, source=source, log=print)
        dist.barrier()
        if not dist.is_main():
            assets = build_demo(seed=cfg.seed, language=language, source=source, log=lambda *_: None)
    cfg.model.path = cfg.model.path or str(assets.policy_path)
    cfg.model.tokenizer = cfg.model.tokenizer or str(assets.tokenizer_path)
    cfg.data.train = cfg.data.train or str(assets.train_path)
    cfg.data.dev = cfg.data.dev or str(assets.dev_path)
    cfg.reward.encoder = cfg.reward.encoder or str(assets.encoder_path)
    cfg.tax_meter.ood_passages = cfg.tax_meter.ood_passages or str(assets.ood_path)


def prepare(cfg: Config, *, need_encoder: bool) -> RunSetup:
    """Validate the config against the file system and load tokenizer and data."""
    if cfg.demo.enabled:
        apply_demo(cfg)
    check_model_source(cfg.model.path, "model.path")
    if need_encoder and "semantic" in cfg.reward.functions:
        check_model_source(cfg.reward.encoder, "reward.encoder")
    if cfg.model.init_from and not Path(cfg.model.init_from).exists():
        raise ConfigError(f"model.init_from {cfg.model.init_from!r} does not exist")
    if not cfg.data.train:
        raise ConfigError("data.train is not set (a JSONL/Parquet file, a folder, a data: path or a hub id)")
    check_data_paths({"data.train": cfg.data.train, "data.dev": cfg.data.dev,
                      **({"tax_meter.ood_passages": cfg.tax_meter.ood_passages} if cfg.tax_meter.every_steps else {})})
    dtype = resolve_dtype(cfg.model.dtype)
    ds_config, plan = load_ds_config(cfg.run.deepspeed, dtype=dtype, world_size=dist.world_size())
    try:
        task = get_task(cfg.data.task)
    except ValueError as exc:
        raise ConfigError(f"data.task: {exc}") from None
    tokenizer = load_tokenizer(cfg.model)
    # Rank 0 says once how many records the length limits dropped (a user-facing line, like "tau = ...").
    say = (lambda msg: print(f"semgrpo: {msg}", flush=True)) if dist.is_main() else None
    common = dict(task=task, tokenizer=tokenizer, max_prompt_length=cfg.data.max_prompt_length,
                  max_sample_tokens=cfg.data.max_sample_tokens, log=say)
    train = build_examples(load_records(cfg.data.train, task=task, split="train"), source=cfg.data.train,
                           **common)
    dev = []
    if cfg.data.dev:
        dev = build_examples(load_records(cfg.data.dev, task=task, split="dev"), source=cfg.data.dev, **common)
    return RunSetup(cfg=cfg, task=task, tokenizer=tokenizer, train=train, dev=dev, ds_config=ds_config,
                    plan=plan, dtype=dtype)


def eos_ids(tokenizer) -> list[int]:
    """Every id that ends a completion: the tokenizer's eos plus the chat end-of-turn token if any."""
    ids = {tokenizer.eos_token_id}
    for tok in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid >= 0:
            ids.add(tid)
    return sorted(i for i in ids if i is not None)
