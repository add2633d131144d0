"""Range and choice checks of a Config: every numeric and choice key, then the rules that tie keys together.

Each error names the key, the value and what is expected (ConfigError).
"""
from __future__ import annotations

import math
from typing import Any

from semgrpo.config.choices import (
    DTYPES,
    IMPORTANCE_SAMPLING_LEVELS,
    REPORT_TO,
    SCALE_REWARDS,
    SCHEDULERS,
    TRL_LOSS_TYPES,
)
from semgrpo.config.keys import get_key
from semgrpo.config.reward_specs import BUILTIN_REWARDS, reward_specs
from semgrpo.config.tree import Config, ConfigError


def validate(cfg: Config) -> None:
    """Range and choice checks that need no files: every numeric and choice key (tables below), then the
    rules that tie several keys together. Each error names the key, the value and what is expected."""
    for key, (ok, expected) in _RANGES.items():
        value = get_key(cfg, key)
        if not ok(value):
            raise ConfigError(f"{key} must be {expected}, got {value!r}")
    for key, choices in CHOICES.items():
        _choice(key, get_key(cfg, key), choices)
    g, r = cfg.grpo, cfg.reward
    _check_rewards(r)
    _check_report_to(cfg.run.report_to)
    _check_script(r.script)
    _check_task(cfg.data.task)
    _check_demo(cfg.demo)
    if r.tau != "auto" and not (_is_number(r.tau) and 0.0 <= float(r.tau) < 1.0):
        raise ConfigError(f"reward.tau must be 'auto' or a number in [0, 1), got {r.tau!r}")
    if r.length_ratio_min > r.length_ratio_max:
        raise ConfigError(f"reward.length_ratio_min {r.length_ratio_min!r} must be <= "
                          f"reward.length_ratio_max {r.length_ratio_max!r}")
    if cfg.model.lora.enabled and not cfg.model.lora.target_modules:
        raise ConfigError("model.lora.target_modules is empty; name the modules LoRA adapts (e.g. [q_proj, v_proj]), "
                          "or train every weight with model.lora.enabled=false")
    if g.merge_adapter_for_generation and not cfg.model.lora.enabled:
        raise ConfigError("grpo.merge_adapter_for_generation needs model.lora.enabled (there is no adapter to merge)")
    if g.loss_type == "cispo" and g.eps_high < 1:
        raise ConfigError(f"grpo.loss_type cispo caps the importance ratio at grpo.eps_high itself (not 1 + eps_high), "
                          f"so grpo.eps_high {g.eps_high!r} < 1 would scale every token down; set grpo.eps_high >= 1 "
                          "(the ScaleRL paper uses 5.0)")
    if g.max_steps <= 0 and g.epochs <= 0:
        raise ConfigError(f"grpo.epochs must be > 0 when grpo.max_steps is unset (-1 or 0), got {g.epochs!r}")


def _check_rewards(r) -> None:
    """reward.functions parse, and every name under reward.weights / reward.kwargs is one of them."""
    if not r.functions:
        raise ConfigError("reward.functions is empty; choose from " + ", ".join(BUILTIN_REWARDS)
                          + ", a plugin package.module:callable or a remote http://host:port/path")
    try:
        specs = {spec.name: spec for spec in reward_specs(r.functions)}
    except ValueError as exc:
        raise ConfigError(f"reward.functions: {exc}") from None
    for name, weight in r.weights.items():
        if name not in specs and name not in BUILTIN_REWARDS:
            raise ConfigError(f"reward.weights.{name} names no reward; reward.functions has "
                              f"{', '.join(specs)}")
        if not math.isfinite(weight):
            raise ConfigError(f"reward.weights.{name} must be a finite number, got {weight!r}")
    for name in r.kwargs:
        if specs.get(name) is None or specs[name].kind != "plugin":
            plugins = [n for n, s in specs.items() if s.kind == "plugin"]
            raise ConfigError(f"reward.kwargs.{name} names no plugin reward; the plugins are "
                              f"{', '.join(plugins) or 'none'}")


def _check_script(script: str) -> None:
    """reward.script: empty (the task's script), or what `semgrpo.script.resolve_script` accepts."""
    if script:
        from semgrpo.script.names import resolve_script

        try:
            resolve_script(script)
        except ValueError as exc:
            raise ConfigError(f"reward.script: {exc}") from None


def _check_task(task: str) -> None:
    from semgrpo.prompts import get_task

    try:
        get_task(task)
    except ValueError as exc:
        raise ConfigError(f"data.task: {exc}") from None


def _check_demo(demo) -> None:
    """demo.language and demo.source are CLDR codes (checked whether the demo is on or not: a typo is a typo)."""
    from semgrpo.demo.cldr import DemoError, check_pair

    try:
        check_pair(demo.language, demo.source)
    except DemoError as exc:
        raise ConfigError(str(exc)) from None


def _check_report_to(report_to: list[str]) -> None:
    if not report_to:
        raise ConfigError("run.report_to is empty; give one or more of tensorboard, wandb, jsonl, or none")
    for name in report_to:
        _choice("run.report_to", name, REPORT_TO)
    if "none" in report_to and len(report_to) > 1:
        raise ConfigError(f"run.report_to: 'none' cannot be combined with others, got {report_to!r}")
    if len(set(report_to)) != len(report_to):
        raise ConfigError(f"run.report_to names a tracker twice: {report_to!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _at_least(minimum: int, note: str = ""):
    """An integer >= minimum."""
    return (lambda v: v >= minimum), f">= {minimum}{note}"


def _within(lo: float, hi: float = math.inf, *, lo_open: bool = False, hi_open: bool = False):
    """A finite float in [lo, hi] (either end open on request); hi = inf means no upper bound."""
    def ok(v):
        return (math.isfinite(v) and (v > lo if lo_open else v >= lo)
                and (v < hi if hi_open else v <= hi))
    if hi == math.inf:
        expected = f"a finite number {'>' if lo_open else '>='} {lo:g}"
    else:
        expected = f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    return ok, expected


def _optional(check, none_means: str):
    """`check`, or None."""
    ok, expected = check
    return (lambda v: v is None or ok(v)), f"{expected}, or {none_means}"


# Every int/float key of the tree and its valid range (tests/test_config_ranges.py checks that none is missing).
_RANGES = {
    # numpy's legacy seed takes [0, 2**32); torch's manual_seed also takes seed * 1000 + rank + 1 (train.py)
    "seed": ((lambda v: 0 <= v < 2**32), f"an integer in [0, {2**32 - 1}] (what numpy and torch take as a seed)"),
    "model.lora.r": _at_least(1),
    "model.lora.alpha": _at_least(1),
    "model.lora.dropout": _within(0, 1, hi_open=True),
    "data.max_prompt_length": _at_least(1),
    "data.max_sample_tokens": _at_least(2),
    "sft.samples": _at_least(0, " (0 = all records)"),
    "sft.epochs": _within(0, lo_open=True),
    "sft.lr": _within(0, lo_open=True),
    "sft.warmup_ratio": _within(0, 1),
    "sft.max_length": _at_least(2),
    "reward.tau_samples": _at_least(1),
    "reward.min_script_ratio": _within(0, 1, lo_open=True),
    "reward.max_foreign": _at_least(0),
    "reward.length_ratio_min": _within(0, lo_open=True),
    "reward.length_ratio_max": _within(0, lo_open=True),
    "reward.encoder_batch_size": _at_least(1),
    "reward.remote_timeout": _within(0, lo_open=True),
    "reward.remote_retries": _at_least(0),
    "reward.remote_max_bytes": _at_least(1),
    "grpo.group_size": _at_least(2),
    "grpo.temperature": _within(0, lo_open=True),
    "grpo.top_p": _within(0, 1, lo_open=True),
    "grpo.max_completion_length": _at_least(1),
    "grpo.beta": _within(0),
    "grpo.advantage_eps": _within(0),
    "grpo.eps_low": _within(0, 1, hi_open=True),
    "grpo.eps_high": _within(0),  # DAPO-style clip-higher may exceed 1
    "grpo.delta": _optional(_within(1, lo_open=True), "null (off)"),  # a cap below the on-policy ratio 1 is no bound
    "grpo.sapo_temperature_pos": _within(0, lo_open=True),
    "grpo.sapo_temperature_neg": _within(0, lo_open=True),
    "grpo.vespo_k_pos": _within(0),  # the power of w: negative would blow up the weight of rare sequences
    "grpo.vespo_lambda_pos": _within(0, lo_open=True),
    "grpo.vespo_k_neg": _within(0),
    "grpo.vespo_lambda_neg": _within(0, lo_open=True),
    "grpo.num_iterations": _at_least(1),
    "grpo.generation_batch_size": _at_least(0, " (0 = all of this rank's completions)"),
    "grpo.lr": _within(0, lo_open=True),
    "grpo.warmup_ratio": _within(0, 1),
    "grpo.epochs": _within(0),
    "grpo.max_steps": ((lambda v: v >= -1), ">= 1, or -1 / 0 to train for grpo.epochs"),
    "grpo.max_resample": _at_least(0),
    "run.weight_decay": _within(0),
    "run.save_every": _at_least(1),
    "run.keep_last": _at_least(1),
    "run.log_every": _at_least(1),
    "run.sample_every": _at_least(0, " (0 = never)"),
    "run.gpu_memory_gib": _within(0),  # 0 = detect
    "tax_meter.every_steps": _at_least(0, " (0 = off)"),
    "tax_meter.ood_samples": _at_least(1),
    "tax_meter.ood_max_tokens": _at_least(2),
    "tax_meter.batch_size": _at_least(1),
}
# Every choice key and its values (config/choices.py).
CHOICES = {
    "model.dtype": DTYPES,
    "sft.scheduler": SCHEDULERS,
    "grpo.loss_type": TRL_LOSS_TYPES,
    "grpo.importance_sampling_level": IMPORTANCE_SAMPLING_LEVELS,
    "grpo.scale_rewards": SCALE_REWARDS,
    "grpo.scheduler": SCHEDULERS,
}


def _choice(key, value, choices):
    if value not in choices:
        shown = ", ".join(repr(c) if c == "" else c for c in choices)
        raise ConfigError(f"{key} must be one of {shown}; got {value!r}")
