"""Few-shot transfer (paper section 4.4, Table 4): from MT checkpoints, fine-tune on N headline samples
with identical settings, then evaluate every result on the headline task.

    python bin/transfer.py --from mt_sft=runs/mt_strong_sft --from mt_rl=runs/mt_bo_zh \\
        --config configs/hg_bo.yaml --samples 1000 --output runs/transfer

Each source is fine-tuned by `bin/train_sft.py` in its own process (through `--launcher`, e.g.
"deepspeed --num_gpus 8"), starting from that source's adapters merged into its base
(`model.init_from`); the SFT settings come from `--config` plus `key=value` overrides, the same for
every source. A finished fine-tune (its summary.json exists) is reused, so an interrupted transfer
picks up where it stopped. The evaluation writes `eval.json` with kind "transfer" and `eval.md` with
Table 4 (ROUGE-L and similarity per model) beside Table 3.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from semgrpo.config import ConfigError, load_config
from semgrpo.data_root import check_data_paths
from semgrpo.errors import run_entry_point
from semgrpo.eval.models import ModelSpec, resolve_model
from semgrpo.lineage import run_config

PROG = "transfer.py"
BIN = Path(__file__).resolve().parents[2] / "bin"
# A source name becomes a folder under --output: a plain identifier, so it cannot climb out of it.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Few-shot transfer MT -> headline generation (paper "
                                "Table 4): fine-tune each MT checkpoint on N HG samples, evaluate all.")
    p.add_argument("--from", dest="sources", action="append", default=[], metavar="NAME=RUN_DIR",
                   help="an MT run (output_dir of train_sft.py or train_grpo.py); repeatable")
    p.add_argument("--config", action="append", default=[], help="SFT config YAML (e.g. configs/hg_bo.yaml)")
    p.add_argument("--train", help="HG training data, a path or data:<path> (default: the config's data.train)")
    p.add_argument("--dev", help="HG test data, a path or data:<path> (default: the config's data.dev)")
    p.add_argument("--samples", type=int, default=1000, help="HG training samples (paper: 1000)")
    p.add_argument("--output", default="runs/transfer")
    p.add_argument("--launcher", default=sys.executable,
                   help='command that runs bin/train_sft.py (default: this python; e.g. "deepspeed --num_gpus 8")')
    p.add_argument("--limit", type=int, default=0, help="first N test samples (0 = all)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=0, help="default: the config's grpo.max_completion_length")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="SFT config overrides, same for every source")
    return p


def _parse_sources(items: list[str]) -> list[tuple[str, str, dict]]:
    """(name, run dir, the run's resolved `model` config) per --from."""
    sources = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--from {item!r} is not of the form NAME=RUN_DIR")
        if not _NAME.fullmatch(name):
            raise ConfigError(f"--from name {name!r} must be a simple identifier (letters, digits, '_' or '-', "
                              "starting with a letter or '_'): it names the folder under --output")
        cfg = run_config(path)
        if cfg is None:
            raise ConfigError(f"--from {name}={path!r} is not a training run (config.json and checkpoints/)")
        sources.append((name, path, cfg["model"]))
    if not sources:
        raise ConfigError("no source: pass --from NAME=RUN_DIR at least once")
    names = [n for n, _, _ in sources]
    if len(set(names)) != len(names) or "base" in names:
        raise ConfigError(f"source names must be unique and not 'base', got {names}")
    return sources


def fine_tune(name: str, source: str, src: dict, args, out: Path) -> Path:
    """Run bin/train_sft.py for one source; returns its output_dir."""
    run_dir = out / name
    if (run_dir / "summary.json").is_file():
        print(f"{PROG}: {name}: reusing the finished fine-tune in {run_dir}", file=sys.stderr)
        return run_dir
    overrides = [f"output_dir={run_dir}", "demo=false", "data.task=hg_bo", f"model.path={src['path']}",
                 f"model.tokenizer={src.get('tokenizer') or src['path']}", f"model.init_from={source}",
                 f"sft.samples={args.samples}", "sft.before_grpo=false", "resume=auto"]
    overrides += [f"data.train={args.train}"] if args.train else []
    overrides += [f"data.dev={args.dev}"] if args.dev else []
    cmd = shlex.split(args.launcher) + [str(BIN / "train_sft.py")]
    cmd += [a for c in args.config for a in ("--config", c)] + overrides + list(args.overrides)
    print(f"{PROG}: {name}: fine-tuning on {args.samples} HG samples: {shlex.join(cmd)}", file=sys.stderr)
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise ConfigError(f"fine-tuning {name} failed (exit {proc.returncode}); its error is printed above")
    return run_dir


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return run_entry_point(PROG, lambda: _transfer(args))


def _transfer(args: argparse.Namespace) -> int:
    from semgrpo.eval.run import EvalSettings, run_evaluation

    if args.samples < 1:
        raise ConfigError(f"--samples must be >= 1, got {args.samples}")
    sources = _parse_sources(args.sources)
    cfg = load_config(args.config, ["demo=false", *args.overrides])  # checks keys before any training
    dev = args.dev or cfg.data.dev
    if not dev:
        raise ConfigError("no HG test data: pass --dev PATH or set data.dev in --config")
    check_data_paths({"--train" if args.train else "data.train": args.train or cfg.data.train,
                      "--dev" if args.dev else "data.dev": dev})  # before the first fine-tune starts
    out = Path(args.output)
    tuned = [(name, fine_tune(name, path, model, args, out)) for name, path, model in sources]
    base_cfg = sources[0][2]
    specs = [ModelSpec(name="base", source=base_cfg["path"])]
    specs += [resolve_model(f"{name}+hg", str(run_dir)) for name, run_dir in tuned]
    settings = EvalSettings(
        output=str(out / "eval"), base=base_cfg["path"], tokenizer=base_cfg.get("tokenizer") or base_cfg["path"],
        models=specs, task="hg_bo", data=dev, limit=args.limit, encoder=cfg.reward.encoder,
        max_new_tokens=args.max_new_tokens or cfg.grpo.max_completion_length,
        max_prompt_length=cfg.data.max_prompt_length, batch_size=args.batch_size, kind="transfer")
    result = run_evaluation(settings)
    from semgrpo.eval.report import table4_markdown

    print(table4_markdown(result))
    print(f"{PROG}: wrote {out / 'eval' / 'eval.json'}, {out / 'eval' / 'eval.md'}", file=sys.stderr)
    return 0
