"""Run configuration: one dataclass tree with defaults, loaded from YAML plus `key=value` overrides.

    tree.py           every key: its default and its help (--help-config, the README's table: help.py)
    keys.py           dotted keys: list, read, set with the field's type (values.py)
    choices.py        the values of every choice key (the ops and the trackers import them from here)
    checks.py         every key's range and the rules between keys
    renames.py        keys renamed before 0.1.0 and saved configs written with them
    reward_specs.py   what an entry of reward.functions names

The DeepSpeed JSON (`run.deepspeed`) stays pure DeepSpeed: batch sizes are read from it and cross-checked against
the group size (ds_config.py). Nothing here imports torch or Triton: a config is checked before anything loads.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from semgrpo.config.checks import validate
from semgrpo.config.keys import MAPPING_KEYS, flatten, get_key, set_key, to_dict, valid_keys
from semgrpo.config.renames import RENAMED_KEYS, renamed, upgrade_saved_config
from semgrpo.config.tree import (
    PAPER_LORA_TARGETS,
    Config,
    ConfigError,
    DataConfig,
    DemoConfig,
    GRPOConfig,
    LoraConfig,
    ModelConfig,
    RewardConfig,
    RunConfig,
    SFTConfig,
    TaxMeterConfig,
)

__all__ = [
    "MAPPING_KEYS", "PAPER_LORA_TARGETS", "RENAMED_KEYS", "Config", "ConfigError", "DataConfig", "DemoConfig",
    "GRPOConfig", "LoraConfig", "ModelConfig", "RewardConfig", "RunConfig", "SFTConfig", "TaxMeterConfig",
    "get_key", "load_config", "set_key", "to_dict", "upgrade_saved_config", "valid_keys", "validate",
]


def load_config(paths: str | Path | list | None = None, overrides: list[str] = ()) -> Config:
    """Build a Config from defaults, then YAML files (later ones win), then `key=value` overrides.

    Old key names (`renames.RENAMED_KEYS`) are applied under their new names, with one deprecation line per old
    name on stderr; an old and a new name for the same key in one source with different values is an error.
    """
    cfg = Config()
    warned: set[str] = set()
    if isinstance(paths, (str, Path)):
        paths = [paths]
    for path in paths or []:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(tree).__name__}")
        for dotted, value in renamed(list(flatten(tree)), str(path), warned):
            set_key(cfg, dotted, value, origin=str(path))
    items = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        dotted, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        items.append((dotted.strip(), value))
    for dotted, value in renamed(items, "command line", warned):
        set_key(cfg, dotted, value, origin="command line")
    validate(cfg)
    return cfg
