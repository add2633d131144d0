"""Dotted keys of the configuration tree: list them, read one, set one with its type checked.

`set_key` is where a value from a YAML file or a `key=value` override enters the tree (config/values.py makes it the
field's type); an unknown key is refused with the list of valid ones.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any

from semgrpo.config.tree import Config, ConfigError
from semgrpo.config.values import coerce

# Keys whose value is a mapping (a YAML mapping under them is their value, not a section).
MAPPING_KEYS = frozenset({"reward.weights", "reward.kwargs"})

SECTIONS = frozenset(f.name for f in dataclasses.fields(Config) if dataclasses.is_dataclass(f.default_factory))


def valid_keys(cls=Config, prefix="") -> list[str]:
    """All dotted keys of the tree, in the tree's order."""
    return [name for name, _ in key_fields(cls, prefix)]


def key_fields(cls=Config, prefix="") -> list[tuple[str, dataclasses.Field]]:
    """(dotted key, its dataclass field) for every key of the tree, in the tree's order."""
    out = []
    for f in dataclasses.fields(cls):
        sub = _dataclass_type(cls, f)
        out += key_fields(sub, f"{prefix}{f.name}.") if sub is not None else [(prefix + f.name, f)]
    return out


def get_key(cfg: Config, dotted: str) -> Any:
    """The value of `a.b.c` in the tree."""
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def set_key(cfg: Config, dotted: str, value: Any, *, origin: str = "") -> None:
    """Set `a.b.c = value` with type checking; unknown keys list the valid ones."""
    node, parts = cfg, dotted.split(".")
    for i, part in enumerate(parts):
        names = {f.name: f for f in dataclasses.fields(node)}
        if part not in names:
            where = f" ({origin})" if origin else ""
            raise ConfigError(
                f"unknown config key {dotted!r}{where}; valid keys: {', '.join(valid_keys())}"
            )
        f = names[part]
        hint = _field_type(type(node), f)
        if typing.get_origin(hint) is dict and i < len(parts) - 1:  # reward.weights.semantic=2.0
            for name in reversed(parts[i + 1:]):  # reward.kwargs.kiwi.batch_size=8 -> {kiwi: {batch_size: 8}}
                value = {name: value}
            _merge_mapping(getattr(node, part), _typed(".".join(parts[: i + 1]), value, hint))
            return
        if i < len(parts) - 1:
            if _dataclass_type(type(node), f) is None:
                raise ConfigError(f"config key {'.'.join(parts[: i + 1])!r} is a value, not a section")
            node = getattr(node, part)
        else:
            if _dataclass_type(type(node), f) is not None:
                raise ConfigError(f"config key {dotted!r} is a section; set its fields, e.g. {dotted}.<field>")
            value = _typed(dotted, value, hint)
            if isinstance(value, dict):  # a partial mapping keeps the other defaults
                value = _merge_mapping(dict(getattr(node, part)), value)
            setattr(node, part, value)


def flatten(tree: dict, prefix: str = ""):
    """(dotted key, value) of a nested mapping as YAML gives it; the mapping keys' values stay whole."""
    for name, value in tree.items():
        dotted = f"{prefix}{name}"
        if isinstance(value, dict) and dotted not in MAPPING_KEYS:
            yield from flatten(value, dotted + ".")
        else:
            yield dotted, value


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def _merge_mapping(old: dict, new: dict) -> dict:
    """`old` updated in place with `new`, one level deep for nested mappings (reward.kwargs.<name>)."""
    for name, value in new.items():
        if isinstance(value, dict) and isinstance(old.get(name), dict):
            old[name] = {**old[name], **value}
        else:
            old[name] = value
    return old


def _field_type(cls, f):
    return typing.get_type_hints(cls)[f.name]


def _dataclass_type(cls, f):
    t = _field_type(cls, f)
    return t if dataclasses.is_dataclass(t) else None


def _typed(dotted: str, value: Any, hint) -> Any:
    """`value` as the type `hint` of key `dotted` (config/values.py), or a ConfigError saying what was expected."""
    try:
        return coerce(dotted, value, hint)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
