"""The config check covers the range of every numeric key and the values of every choice key (issue #12.6):
a bad value is a ConfigError naming the key, the value and what is expected, raised by load_config, so
before anything loads or is written. The slow end-to-end form of a few of these is in test_cli_errors.py."""
import dataclasses
import typing

import pytest

from semgrpo.config import Config, ConfigError, load_config, valid_keys


def _numeric_keys():
    """(dotted key, python type) of every int/float field of the config tree."""
    out = []

    def walk(cls, prefix):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            if dataclasses.is_dataclass(hint):
                walk(hint, f"{prefix}{f.name}.")
            elif hint in (int, float):
                out.append((prefix + f.name, hint))

    walk(Config, "")
    return out


NUMERIC = _numeric_keys()


def _rejects(override, *needles):
    with pytest.raises(ConfigError) as info:
        load_config([], [override])
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    return message


def test_the_walk_finds_the_numeric_keys():
    keys = {k for k, _ in NUMERIC}
    assert {"seed", "model.lora.r", "train.log_every", "grpo.temperature", "eval.batch_size"} <= keys
    assert keys <= set(valid_keys())


@pytest.mark.parametrize("key", [k for k, _ in NUMERIC])
def test_every_numeric_key_has_a_lower_bound(key):
    _rejects(f"{key}=-1000000000", key, "-1000000000", "must be")


@pytest.mark.parametrize("key", [k for k, t in NUMERIC if t is float])
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_every_float_key_rejects_nan_and_inf(key, value):
    _rejects(f"{key}={value}", key, "must be")


# The cases of issue #12.6 (crash late or accepted silently before), then one more per range rule.
BAD = [
    ("train.lr=-1", "train.lr must be a finite number > 0, got -1.0"),
    ("train.lr=.nan", "train.lr must be a finite number > 0, got nan"),
    ("train.weight_decay=-1", "train.weight_decay must be a finite number >= 0, got -1.0"),
    ("seed=-1", "seed must be >= 0, got -1"),
    ("model.lora.r=0", "model.lora.r must be >= 1, got 0"),
    ("model.lora.dropout=2", "model.lora.dropout must be a number in [0, 1), got 2.0"),
    ("grpo.temperature=.inf", "grpo.temperature must be a finite number > 0, got inf"),
    ("grpo.generation_batch_size=-3", "grpo.generation_batch_size must be >= 0"),
    ("train.log_every=0", "train.log_every must be >= 1, got 0"),
    ("reward.script=klingon", "reward.script must be one of '', tibetan, han, latin; got 'klingon'"),
    ("reward.min_script_ratio=5", "reward.min_script_ratio must be a number in (0, 1], got 5.0"),
    ("reward.max_foreign=-1", "reward.max_foreign must be >= 0, got -1"),
    ("train.warmup_ratio=5", "train.warmup_ratio must be a number in [0, 1], got 5.0"),
    ("train.max_steps=-5", "train.max_steps must be >= 1, or -1 / 0 to train for train.epochs, got -5"),
    ("sft.epochs=0", "sft.epochs must be a finite number > 0, got 0.0"),
    ("sft.samples=-5", "sft.samples must be >= 0 (0 = all records), got -5"),
    ("train.sample_every=-1", "train.sample_every must be >= 0 (0 = never), got -1"),
    # more of the table
    ("model.lora.dropout=1", "model.lora.dropout must be a number in [0, 1)"),
    ("model.lora.alpha=0", "model.lora.alpha must be >= 1"),
    ("grpo.temperature=0", "grpo.temperature must be a finite number > 0"),
    ("grpo.top_p=0", "grpo.top_p must be a number in (0, 1]"),
    ("grpo.top_p=1.5", "grpo.top_p must be a number in (0, 1]"),
    ("grpo.eps_low=1", "grpo.eps_low must be a number in [0, 1)"),
    ("grpo.eps_high=-0.1", "grpo.eps_high must be a finite number >= 0"),
    ("grpo.beta=-0.1", "grpo.beta must be a finite number >= 0"),
    ("grpo.beta=.inf", "grpo.beta must be a finite number >= 0, got inf"),
    ("grpo.group_size=1", "grpo.group_size must be >= 2"),
    ("sft.warmup_ratio=1.5", "sft.warmup_ratio must be a number in [0, 1]"),
    ("sft.lr=0", "sft.lr must be a finite number > 0"),
    ("reward.min_script_ratio=0", "reward.min_script_ratio must be a number in (0, 1]"),
    ("reward.length_ratio_max=.inf", "reward.length_ratio_max must be a finite number > 0"),
    ("reward.length_ratio_min=3", "reward.length_ratio_min 3.0 must be <= reward.length_ratio_max 2.0"),
    ("reward.weights.semantic=.nan", "reward.weights.semantic must be a finite number, got nan"),
    ("reward.tau=1", "reward.tau must be 'auto' or a number in [0, 1), got 1"),
    ("reward.tau=-0.5", "reward.tau must be 'auto' or a number in [0, 1)"),
    ("reward.tau=.nan", "reward.tau must be 'auto' or a number in [0, 1), got nan"),
    ("reward.tau=high", "reward.tau must be 'auto' or a number in [0, 1), got 'high'"),
    ("reward.encoder_batch_size=0", "reward.encoder_batch_size must be >= 1"),
    ("data.task=mt_en_fr", "data.task must be one of mt_bo_zh"),
    ("model.dtype=fp8", "model.dtype must be one of auto, bf16, fp16, fp32; got 'fp8'"),
    ("train.epochs=.inf", "train.epochs must be a finite number >= 0, got inf"),
    ("train.epochs=0", "train.epochs must be > 0 when train.max_steps is unset"),
    ("eval.every_steps=-1", "eval.every_steps must be >= 0 (0 = off), got -1"),
]


@pytest.mark.parametrize("override,message", BAD, ids=[o for o, _ in BAD])
def test_bad_value_is_one_clear_error(override, message):
    _rejects(override, message)


GOOD = ["train.max_steps=-1", "train.max_steps=0", "train.max_steps=5", "train.epochs=0.5", "sft.samples=0",
        "train.sample_every=0", "grpo.generation_batch_size=0", "reward.tau=0", "reward.tau=0.75",
        "reward.tau=auto", "train.warmup_ratio=1", "grpo.top_p=1", "model.lora.dropout=0", "grpo.beta=0",
        "reward.script=han", "reward.script=", "reward.min_script_ratio=1", "reward.max_foreign=0", "seed=0",
        "eval.every_steps=0"]


@pytest.mark.parametrize("override", GOOD)
def test_edge_values_are_accepted(override):
    load_config([], [override])


def test_max_steps_with_epochs():
    assert load_config([], ["train.max_steps=3", "train.epochs=0"]).train.max_steps == 3
