"""Config keys renamed before the first release (0.1.0) and how the old names keep working through the 0.1 series.

`load_config` applies an old name under its new one with one deprecation line; saved configs (a run's or
a checkpoint's `config.json`) written with the old sections are read through `upgrade_saved_config`.
"""
from __future__ import annotations

import os
import sys
from typing import Any

from semgrpo.config.keys import SECTIONS, get_key, set_key
from semgrpo.config.tree import Config, ConfigError

# Renamed keys: old dotted name -> new one. `load_config` still takes the old names, with one deprecation line
# each, until DEPRECATED_UNTIL, the minor release after semgrpo.__version__ (a test fails once the package
# reaches it: then the old names go); saved configs with the old sections are read through `upgrade_saved_config`.
DEPRECATED_UNTIL = "0.2"
RENAMED_KEYS = {
    **{f"train.{k}": f"grpo.{k}" for k in ("lr", "scheduler", "warmup_ratio", "epochs", "max_steps")},
    **{f"train.{k}": f"run.{k}" for k in ("deepspeed", "weight_decay", "save_every", "keep_last", "log_every",
                                           "sample_every")},
    **{f"eval.{k}": f"tax_meter.{k}" for k in ("every_steps", "ood_passages", "ood_samples", "ood_max_tokens",
                                               "batch_size")},
}
# Sections that were a plain value in development snapshots before 0.1.0, and the field that value sets now:
# `demo: true`, `demo=true` and a saved `"demo": true` mean demo.enabled (no deprecation: the short form stays).
SECTION_SHORTHANDS = {"demo": "enabled"}


def renamed(items: list[tuple[str, Any]], origin: str, warned: set[str]) -> list[tuple[str, Any]]:
    """`items` (dotted key, value) of one source with old key names replaced by the new ones, in order (and a
    plain value given for a section of `SECTION_SHORTHANDS` given to its field).

    Prints one deprecation line per old name (once per `warned` set, on one rank only); raises a
    ConfigError when the source gives an old name and its new name with different values."""
    items = [(f"{key}.{SECTION_SHORTHANDS[key]}" if key in SECTION_SHORTHANDS and not isinstance(value, dict)
              else key, value) for key, value in items]
    given = {}  # new name -> (name as given, value): the last of each, as set_key applies them
    for key, value in items:
        given.setdefault(RENAMED_KEYS.get(key, key), {})[key] = value
    for new, names in given.items():
        if len(names) > 1:
            (a, va), (b, vb) = names.items()
            if _coerced(new, va) != _coerced(new, vb):
                raise ConfigError(f"{a}={va!r} and {b}={vb!r} ({origin}) set the same key ({b} is the new name "
                                  f"of {a}); give only {b}")
    out = []
    for key, value in items:
        if key in RENAMED_KEYS:
            new = RENAMED_KEYS[key]
            if key not in warned:
                warned.add(key)
                if os.environ.get("RANK", "0") == "0":  # a launcher's other ranks stay quiet
                    print(f"semgrpo: config key {key} is deprecated; use {new} (the old name works until "
                          f"{DEPRECATED_UNTIL})", file=sys.stderr, flush=True)
            key = new
        out.append((key, value))
    return out


def _coerced(dotted: str, value: Any) -> Any:
    """`value` as `set_key` would store it under `dotted` (for comparing two spellings of one value)."""
    scratch = Config()
    try:
        set_key(scratch, dotted, value)
    except ConfigError:
        return ("invalid", repr(value))
    return get_key(scratch, dotted)


def upgrade_saved_config(tree: dict | None) -> dict | None:
    """A saved config (run or checkpoint `config.json`, `to_dict` form) with the sections of older versions
    (`train`, `eval`) moved to their new names (`RENAMED_KEYS`); a value already under its new name wins. A
    section saved as a plain value (`"demo": true`) becomes its shorthand field (`{"enabled": true}`).
    Keys it does not know stay where they are. Returns a new dict; the input is not changed."""
    if not isinstance(tree, dict):
        return tree
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in tree.items()}
    for section in sorted({old.split(".")[0] for old in RENAMED_KEYS}):
        old_sec = out.get(section)
        if not isinstance(old_sec, dict) or section in SECTIONS:
            continue
        for field_name in list(old_sec):
            new = RENAMED_KEYS.get(f"{section}.{field_name}")
            if new is None:
                continue
            new_sec, new_field = new.split(".")
            target = out.setdefault(new_sec, {})
            if isinstance(target, dict):
                target.setdefault(new_field, old_sec.pop(field_name))
        if not old_sec:
            del out[section]
    for section, field_name in SECTION_SHORTHANDS.items():  # "demo": true, as configs saved before 0.1.0 hold it
        if section in out and not isinstance(out[section], dict):
            out[section] = {field_name: out[section]}
    _fill_legacy_values(out)
    return out


def _fill_legacy_values(tree: dict) -> None:
    """Keys added after a config was saved, whose default is not what that run did, get the value it ran with, so
    that a resume compares like with like. grpo.use_bias_correction_kl (default true since 0.1.0) was false before;
    with beta == 0 it changes nothing, so such a run takes the default."""
    grpo = tree.get("grpo")
    if isinstance(grpo, dict) and "use_bias_correction_kl" not in grpo:
        grpo["use_bias_correction_kl"] = not grpo.get("beta", 0.0)
