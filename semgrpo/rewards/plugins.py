"""Rewards from outside the package: `package.module:callable` entries of `reward.functions`.

A plugin has the TRL shape `(prompts, completions, references, **kwargs) -> list[float | None]` and is called
with keyword arguments, so a TRL function that takes `(prompts, completions, **kwargs)` works unchanged (it
finds the references in kwargs). It may be a class, built once with `reward.kwargs.<name>` as constructor
arguments, whose instances are called; and it may be async (a coroutine function, or any callable that
returns an awaitable), then each call runs to completion on a fresh event loop.

The module is imported from `sys.path`: install it, or put its folder on PYTHONPATH (every rank needs it).
"""
from __future__ import annotations

import asyncio
import importlib
import inspect
from typing import Any

from semgrpo.config import ConfigError
from semgrpo.config.reward_specs import RewardSpec


class PluginReward:
    """A user's callable under its reward name; calls it with keywords and awaits what it returns."""

    def __init__(self, name: str, fn, origin: str):
        self.__name__ = name
        self.fn = fn
        self.origin = origin  # "module:attribute", for error messages

    def __call__(self, prompts, completions, references) -> Any:
        out = self.fn(prompts=list(prompts), completions=list(completions), references=list(references))
        if inspect.isawaitable(out):
            out = asyncio.run(_awaited(out))
        return out


async def _awaited(awaitable):
    return await awaitable


def load_plugin(spec: RewardSpec, kwargs: dict[str, Any]) -> PluginReward:
    """Import `spec.target` and make it a reward; every failure is a ConfigError naming the entry."""
    module_name, _, attribute = spec.target.partition(":")
    where = f"reward.functions entry {spec.target!r} (reward {spec.name!r})"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{where}: cannot import {module_name!r} ({exc}); install it or put its folder on "
                          "PYTHONPATH on every rank") from None
    except Exception as exc:  # the module's own code failed while importing
        raise ConfigError(f"{where}: importing {module_name!r} failed: {type(exc).__name__}: {exc}") from exc
    if not hasattr(module, attribute):
        raise ConfigError(f"{where}: module {module_name!r} ({getattr(module, '__file__', '?')}) has no "
                          f"attribute {attribute!r}")
    obj = getattr(module, attribute)
    if inspect.isclass(obj):
        try:
            obj = obj(**kwargs)
        except (TypeError, ValueError) as exc:  # wrong or missing arguments, or values the class refuses
            raise ConfigError(f"{where}: building {attribute}(**reward.kwargs.{spec.name}) failed: {exc}") from None
    elif kwargs:
        raise ConfigError(f"reward.kwargs.{spec.name} is set but {spec.target} is not a class (nothing to build)")
    if not callable(obj):
        raise ConfigError(f"{where}: {attribute} is a {type(obj).__name__}, not a callable or a class with "
                          "__call__")
    return PluginReward(spec.name, obj, spec.target)
