"""Run lineage: which adapters rebuild a run's policy, and the configuration a run or checkpoint was trained with.

A run started from another run (`model.init_from`) trained its adapter on that run's merged policy, so a
GRPO run after a cold start is base + SFT adapter + GRPO adapter. Training (`modeling.load_policy`) and
evaluation (`semgrpo.eval.models`) both rebuild policies from here.
"""
from __future__ import annotations

import json
from pathlib import Path

from semgrpo.config import ConfigError, upgrade_saved_config


def find_adapter_dir(init_from: str) -> Path:
    """Accept an adapter dir, a checkpoint dir, or the output_dir of train_sft.py (its newest checkpoint)."""
    from semgrpo.checkpoint import find_latest_checkpoint

    root = Path(init_from)
    latest = find_latest_checkpoint(root)
    for cand in (root, root / "adapter", latest / "adapter" if latest else None):
        if cand is not None and (cand / "adapter_config.json").is_file():
            return cand
    cfg = run_config(root) if latest is not None else None
    if cfg and cfg["model"].get("lora", {}).get("enabled") is False:
        raise ConfigError(f"{init_from!r} is a full-parameter run (model.lora.enabled=false): its checkpoints hold "
                          f"ZeRO shards, not an adapter; export it (python bin/export.py {init_from} OUT_DIR) and "
                          "use OUT_DIR as the model path")
    raise ConfigError(
        f"model.init_from {init_from!r} holds no adapter (looked for adapter_config.json in it, in adapter/ "
        "and in its newest complete checkpoint); pass the output_dir of bin/train_sft.py"
    )


def run_config(source: str | Path) -> dict | None:
    """The resolved config of the run that `source` (a run dir, a checkpoint or its adapter) belongs to.

    It is the config saved with the checkpoint that `find_adapter_dir(source)` picks (the one named, or
    the run's newest complete one): `<run>/config.json` is rewritten by every later start of the run,
    which may have changed it. Checkpoints saved without their own config fall back to the run's.
    A config saved by an older version comes back with its sections under their current names
    (`config.upgrade_saved_config`: `train.*` -> `grpo.*`/`run.*`, `eval.*` -> `tax_meter.*`).
    """
    from semgrpo.checkpoint import checkpoint_config, find_latest_checkpoint, is_complete_checkpoint

    path = Path(source)
    for run_dir in (path, path.parent, path.parent.parent, path.parent.parent.parent):
        if not (run_dir / "checkpoints").is_dir():
            continue
        ckpt = next((p for p in (path, path.parent) if p.parent == run_dir / "checkpoints"
                     and is_complete_checkpoint(p)), None) or find_latest_checkpoint(run_dir)
        cfg = checkpoint_config(ckpt) if ckpt is not None else None
        if cfg is None:
            cfg_file = run_dir / "config.json"
            if not cfg_file.is_file():
                continue
            try:
                cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
            except ValueError:
                raise ConfigError(f"{cfg_file} is not valid JSON") from None
        return upgrade_saved_config(cfg) if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict) else None
    return None


def adapter_chain(init_from: str) -> list[Path]:
    """Every adapter to apply, in order, to rebuild the policy saved under `init_from`.

    A run started from another run (`model.init_from`, recorded in its config.json) trained its adapter
    on top of that run's merged policy, so GRPO after a cold start is base + SFT adapter + GRPO adapter.
    """
    chain: list[Path] = []
    source = init_from
    while source:
        adapter = find_adapter_dir(source)
        if adapter.resolve() in {a.resolve() for a in chain}:
            raise ConfigError(f"model.init_from chain loops back to {adapter}")
        chain.insert(0, adapter)
        cfg = run_config(source)
        parent = cfg["model"].get("init_from", "") if cfg else ""
        source = _locate(parent, near=source) if parent else ""
    return chain


def _locate(recorded: str, *, near: str | Path) -> str:
    """A path recorded in a run's config.json; a relative one may be relative to any ancestor of the run
    (the directory the run was launched from), so evaluation works from another working directory."""
    if Path(recorded).exists() or Path(recorded).is_absolute():
        if not Path(recorded).exists():
            raise ConfigError(f"{str(near)!r} was trained from model.init_from {recorded!r}, which no longer exists")
        return recorded
    for ancestor in Path(near).resolve().parents:
        if (ancestor / recorded).exists():
            return str(ancestor / recorded)
    raise ConfigError(f"{str(near)!r} was trained from model.init_from {recorded!r}, which no longer exists")
