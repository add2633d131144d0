"""How a value from a YAML file or a `key=value` override becomes the type of its config field.

Kept apart from the dataclass tree (config/tree.py) so each file has one job; it imports nothing of semgrpo.
"""
from __future__ import annotations

import contextlib
import types
import typing
from typing import Any


def coerce(key: str, value: Any, hint) -> Any:
    """`value` (from YAML or a `key=value` override) as the field type `hint`; a ValueError names `key`, the value
    and the type expected."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):  # `float | None`: null (YAML) turns the option off
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return None if value is None else coerce(key, value, inner[0])
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{key} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"{key} must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 5e-3 (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ValueError(f"{key} must be a number, got {value!r}")
    if hint is str:
        if value is None:
            return ""
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"{key} must be a string, got {value!r}")
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{key} must be a list of strings, got {value!r}")
        return list(value)
    if origin is dict and typing.get_args(hint)[1] is not float:  # reward.kwargs: name -> {argument: value}
        if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
            raise ValueError(f"{key} must be a mapping of name: {{argument: value}}, got {value!r}")
        return {str(k): {str(a): x for a, x in v.items()} for k, v in value.items()}
    if origin is dict:
        if not isinstance(value, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values()
        ):
            raise ValueError(f"{key} must be a mapping of name: number, got {value!r}")
        return {str(k): float(v) for k, v in value.items()}
    raise ValueError(f"{key}: unsupported type {hint}")  # pragma: no cover - programming error
