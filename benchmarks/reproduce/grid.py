"""The experiment's stages as jobs: which run trains from what, on which file, with which learning rate, and
how each run is evaluated at every checkpoint on the select and the test sets.

Runs of one seed live in ``<output>/seed<s>/<arm>``; continuation arms (GRPO and its variants, SFT
continuation) start from that seed's cold start and are named ``<arm>_lr<multiple>``. Every run saves
`checkpoints` evenly spaced checkpoints, so `bin/evaluate.py --checkpoints all` gives its curve.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from reproduce.jobs import Job, python_cmd

ROOT = Path(__file__).resolve().parents[2]
SETS = ("select", "test")
CONTINUATIONS = ("grpo", "grpo_beta", "grpo_length", "sft_continuation")


@dataclass(frozen=True)
class Files:
    """The work folder's inputs every stage reads (`data/`, the shared trainer config, the base)."""

    data: Path
    trainer: Path
    ds_config: Path
    policy: Path
    encoder: Path
    independent_encoder: Path

    def stage(self, name: str) -> Path:
        return self.data / f"{name}.jsonl"


def run_name(arm: str, lr_multiple: float | None = None) -> str:
    return arm if lr_multiple is None else f"{arm}_lr{lr_multiple:g}"


def save_every(cfg: dict, arm: str, n_pairs: int) -> int:
    """Steps between checkpoints for `cfg['checkpoints']` evenly spaced ones (the trainers also save the last)."""
    ds = cfg["deepspeed"]
    global_batch = ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"]
    if arm.startswith("grpo"):
        steps = n_pairs // (global_batch // cfg["trainer"]["grpo"]["group_size"])
    else:
        epochs = float(_arm(cfg, arm).get("sft.epochs", cfg["trainer"]["sft"].get("epochs", 1)))
        steps = math.ceil(epochs * math.ceil(n_pairs / global_batch))
    return max(1, math.ceil(steps / cfg["checkpoints"]))


def _arm(cfg: dict, arm: str) -> dict:
    return cfg["arms"].get(arm) or {}


def training_job(cfg: dict, files: Files, seed: int, arm: str, *, lr_multiple: float | None, n_pairs: int,
                 n_cold: int) -> Job:
    """One training run of `arm` for `seed` (a continuation at `lr_multiple` x eta)."""
    out = seed_dir(files, seed) / run_name(arm, lr_multiple)
    eta = float(cfg["trainer"]["sft"]["lr"])
    overrides = [f"{k}={v}" for k, v in _arm(cfg, arm).items()]
    common = ["--config", files.trainer, f"seed={seed}", f"output_dir={out}",
              f"run.save_every={save_every(cfg, arm, n_pairs)}"]
    if arm == "cold_start":
        argv = python_cmd(ROOT / "bin" / "train_sft.py", *common, f"data.train={files.stage('cold_start')}",
                          f"sft.samples={n_cold}", *overrides)
        return Job(f"seed{seed}.cold_start", argv, reads=_reads(files, "cold_start"), output=out)
    if arm == "strong_sft":
        argv = python_cmd(ROOT / "bin" / "train_sft.py", *common, f"data.train={files.stage('strong_sft')}",
                          *overrides)
        return Job(f"seed{seed}.strong_sft", argv, reads=_reads(files, "strong_sft"), output=out)
    start = [f"model.init_from={seed_dir(files, seed) / 'cold_start'}"]
    if arm == "sft_continuation":
        argv = python_cmd(ROOT / "bin" / "train_sft.py", *common, *start,
                          f"data.train={files.stage('sft_continuation')}", f"sft.lr={lr_multiple * eta!r}", *overrides)
    else:
        argv = python_cmd(ROOT / "bin" / "train_grpo.py", *common, *start, f"data.train={files.stage('grpo')}",
                          f"data.dev={files.stage('tau')}", f"grpo.lr={lr_multiple * eta!r}", *overrides)
    name = f"seed{seed}.{run_name(arm, lr_multiple)}"
    stage = "sft_continuation" if arm == "sft_continuation" else "grpo"
    return Job(name, argv, needs=[f"seed{seed}.cold_start"], reads=_reads(files, stage, "tau"), output=out)


def evaluation_job(cfg: dict, files: Files, seed: int, run: str, which: str) -> Job:
    """`run` of `seed` at every checkpoint (with the base and the stages it started from) on one set."""
    run_dir = seed_dir(files, seed) / run
    out = run_dir / f"eval_{which}"
    ev = cfg["evaluation"]
    argv = python_cmd(ROOT / "bin" / "evaluate.py", "--run", run_dir, "--checkpoints", "all",
                      "--data", files.stage(which), "--ood", files.stage(f"ood_{which}"), "--ood-samples", 100000,
                      "--ood-max-tokens", cfg["base"]["block_tokens"], "--max-new-tokens", ev["max_new_tokens"],
                      "--batch-size", ev["batch_size"], "--encoder", files.encoder,
                      "--independent-encoder", files.independent_encoder, "--seed", seed, "--output", out)
    return Job(f"seed{seed}.{run}.eval_{which}", argv, needs=[f"seed{seed}.{run}"],
               reads=[files.stage(which), files.stage(f"ood_{which}")], output=out)


def seed_dir(files: Files, seed: int) -> Path:
    return files.data.parent / f"seed{seed}"


def _reads(files: Files, *stages: str) -> list[Path]:
    return [files.trainer, files.ds_config, *(files.stage(s) for s in stages)]


def runs_of_seed(cfg: dict, seed: int, *, picked: dict[str, float] | None) -> list[tuple[str, float | None]]:
    """(arm, lr multiple) of every run of `seed`: the whole grid when `picked` is None (seed 0), else the
    cold start, Strong SFT and the picked learning rate of GRPO and of SFT continuation."""
    runs: list[tuple[str, float | None]] = [("cold_start", None), ("strong_sft", None)]
    if picked is None:
        grpo = cfg["grids"]["grpo"]
        runs += [("grpo", m) for m in grpo]
        middle = grpo[len(grpo) // 2]  # the variants run at the grid's middle rate
        runs += [(variant, middle) for variant in cfg.get("variants", [])]
        runs += [("sft_continuation", m) for m in cfg["grids"]["sft_continuation"]]
    else:
        runs += [("grpo", picked["grpo"]), ("sft_continuation", picked["sft_continuation"])]
    return runs


def jobs_for_seed(cfg: dict, files: Files, seed: int, *, picked: dict[str, float] | None, n_rest: int,
                  n_cold: int, n_all: int) -> list[Job]:
    """Training and evaluation jobs of one seed, long chains first (cold start, GRPO runs, the rest)."""
    train, evals = [], []
    for arm, lr in runs_of_seed(cfg, seed, picked=picked):
        n = {"cold_start": n_cold, "strong_sft": n_all}.get(arm, n_rest)
        job = training_job(cfg, files, seed, arm, lr_multiple=lr, n_pairs=n, n_cold=n_cold)
        train.append(job)
        evals += [evaluation_job(cfg, files, seed, run_name(arm, lr), which) for which in SETS]
    order = sorted(train, key=lambda j: (0 if j.name.endswith("cold_start") else 1 if ".grpo" in j.name else 2))
    return order + evals


def trainer_config(cfg: dict, out: Path, *, policy: Path, encoder: Path) -> tuple[Path, Path]:
    """The shared run config and DeepSpeed JSON every stage reads."""
    import yaml

    ds = json.loads((ROOT / "ds_configs" / "zero3.json").read_text(encoding="utf-8")) | cfg["deepspeed"]
    ds_path = out / "ds_config.json"
    ds_path.write_text(json.dumps(ds, indent=2) + "\n", encoding="utf-8")
    trainer = json.loads(json.dumps(cfg["trainer"]))
    trainer.setdefault("model", {})["path"] = str(policy)
    trainer.setdefault("reward", {})["encoder"] = str(encoder)
    trainer.setdefault("run", {})["deepspeed"] = str(ds_path)
    path = out / "trainer.yaml"
    path.write_text(yaml.safe_dump(trainer, sort_keys=False), encoding="utf-8")
    return path, ds_path
