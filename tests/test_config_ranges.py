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
    assert {"seed", "model.lora.r", "run.log_every", "grpo.temperature", "tax_meter.batch_size"} <= keys
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
    ("grpo.lr=-1", "grpo.lr must be a finite number > 0, got -1.0"),
    ("grpo.lr=.nan", "grpo.lr must be a finite number > 0, got nan"),
    ("run.weight_decay=-1", "run.weight_decay must be a finite number >= 0, got -1.0"),
    ("seed=-1", "seed must be an integer in [0, 4294967295] (what numpy and torch take as a seed), got -1"),
    # issue 27: crashed after config.json was written (torch's seed overflowed) / in PEFT after the model loaded
    ("seed=100000000000000000", "seed must be an integer in [0, 4294967295]"),
    ("seed=4294967296", "seed must be an integer in [0, 4294967295]"),
    ("model.lora.target_modules=[]", "model.lora.target_modules is empty; name the modules LoRA adapts"),
    ("model.lora.r=0", "model.lora.r must be >= 1, got 0"),
    ("model.lora.dropout=2", "model.lora.dropout must be a number in [0, 1), got 2.0"),
    ("grpo.temperature=.inf", "grpo.temperature must be a finite number > 0, got inf"),
    ("grpo.generation_batch_size=-3", "grpo.generation_batch_size must be >= 0"),
    ("run.log_every=0", "run.log_every must be >= 1, got 0"),
    ("reward.script=klingon", "reward.script: unknown script 'klingon'; expected an ISO 15924 code or Unicode name"),
    ("reward.script=Common", "reward.script: script 'Common' is no target script"),
    ("reward.min_script_ratio=5", "reward.min_script_ratio must be a number in (0, 1], got 5.0"),
    ("reward.max_foreign=-1", "reward.max_foreign must be >= 0, got -1"),
    ("grpo.warmup_ratio=5", "grpo.warmup_ratio must be a number in [0, 1], got 5.0"),
    ("grpo.max_steps=-5", "grpo.max_steps must be >= 1, or -1 / 0 to train for grpo.epochs, got -5"),
    ("sft.epochs=0", "sft.epochs must be a finite number > 0, got 0.0"),
    ("sft.samples=-5", "sft.samples must be >= 0 (0 = all records), got -5"),
    ("run.sample_every=-1", "run.sample_every must be >= 0 (0 = never), got -1"),
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
    ("data.task=mt_en_xx", "data.task: unknown task 'mt_en_xx' (expected one of: mt_bo_zh"),
    ("demo.language=xx", "demo.language: 'xx' is not a CLDR locale"),
    ("demo.source=bo", "demo.language and demo.source are both 'bo'"),
    ("model.dtype=fp8", "model.dtype must be one of auto, bf16, fp16, fp32; got 'fp8'"),
    ("grpo.epochs=.inf", "grpo.epochs must be a finite number >= 0, got inf"),
    ("grpo.epochs=0", "grpo.epochs must be > 0 when grpo.max_steps is unset"),
    ("tax_meter.every_steps=-1", "tax_meter.every_steps must be >= 0 (0 = off), got -1"),
    # the loss keys of issue 26 (delta is `float | None`, outside the numeric walk above)
    ("grpo.loss_type=ppo", "grpo.loss_type must be one of grpo, bnpo, dr_grpo, dapo, cispo, sapo, luspo, vespo; "
                           "got 'ppo'"),
    ("grpo.importance_sampling_level=batch", "grpo.importance_sampling_level must be one of token, sequence"),
    ("grpo.delta=1", "grpo.delta must be a finite number > 1, or null (off), got 1.0"),
    ("grpo.delta=-1000000000", "grpo.delta must be a finite number > 1, or null (off)"),
    ("grpo.delta=.inf", "grpo.delta must be a finite number > 1, or null (off), got inf"),
    ("grpo.delta=.nan", "grpo.delta must be a finite number > 1, or null (off), got nan"),
    ("grpo.delta=wide", "grpo.delta must be a number, got 'wide'"),
    ("grpo.use_bias_correction_kl=1", "grpo.use_bias_correction_kl must be true or false, got 1"),
    ("grpo.mask_truncated_completions=yes please", "grpo.mask_truncated_completions must be true or false"),
    ("grpo.sapo_temperature_neg=0", "grpo.sapo_temperature_neg must be a finite number > 0, got 0.0"),
    ("grpo.vespo_lambda_pos=0", "grpo.vespo_lambda_pos must be a finite number > 0, got 0.0"),
    ("grpo.vespo_k_neg=-1", "grpo.vespo_k_neg must be a finite number >= 0, got -1.0"),
]


def test_cispo_needs_an_absolute_cap_of_at_least_one():
    _rejects("grpo.loss_type=cispo", "grpo.loss_type cispo caps the importance ratio at grpo.eps_high itself",
             "grpo.eps_high 0.2 < 1", "5.0")
    assert load_config([], ["grpo.loss_type=cispo", "grpo.eps_high=5"]).grpo.eps_high == 5.0


@pytest.mark.parametrize("override,message", BAD, ids=[o for o, _ in BAD])
def test_bad_value_is_one_clear_error(override, message):
    _rejects(override, message)


GOOD = ["grpo.max_steps=-1", "grpo.max_steps=0", "grpo.max_steps=5", "grpo.epochs=0.5", "sft.samples=0",
        "run.sample_every=0", "grpo.generation_batch_size=0", "reward.tau=0", "reward.tau=0.75",
        "reward.tau=auto", "grpo.warmup_ratio=1", "grpo.top_p=1", "model.lora.dropout=0", "grpo.beta=0",
        "reward.script=han", "reward.script=", "reward.min_script_ratio=1", "reward.max_foreign=0", "seed=0",
        "tax_meter.every_steps=0", "seed=4294967295", "grpo.delta=null", "grpo.delta=1.5", "grpo.vespo_k_pos=0",
        "grpo.importance_sampling_level=sequence", "grpo.use_bias_correction_kl=false",
        "grpo.mask_truncated_completions=true"]


@pytest.mark.parametrize("override", GOOD)
def test_edge_values_are_accepted(override):
    load_config([], [override])


def test_no_target_modules_is_fine_without_lora():
    assert load_config([], ["model.lora.enabled=false", "model.lora.target_modules=[]"]).model.lora.target_modules == []


def test_max_steps_with_epochs():
    assert load_config([], ["grpo.max_steps=3", "grpo.epochs=0"]).grpo.max_steps == 3


# Issue #13.3: the renamed sections. Old names keep working until 0.3, with one deprecation line each.


def _deprecations(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if "is deprecated" in ln]


def test_old_key_names_are_applied_under_the_new_ones_with_one_line_each(tmp_path, capsys):
    from semgrpo.config import RENAMED_KEYS

    old = tmp_path / "old.yaml"
    old.write_text("train:\n  lr: 1.0e-3\n  deepspeed: ds.json\n  save_every: 7\neval:\n  every_steps: 5\n")
    cfg = load_config([old], ["train.lr=2.0e-3", "train.lr=3.0e-3", "eval.ood_samples=4", "train.max_steps=9"])
    assert (cfg.grpo.lr, cfg.grpo.max_steps) == (3.0e-3, 9)
    assert (cfg.run.deepspeed, cfg.run.save_every) == ("ds.json", 7)
    assert (cfg.tax_meter.every_steps, cfg.tax_meter.ood_samples) == (5, 4)
    lines = _deprecations(capsys.readouterr().err)
    assert sorted(lines) == sorted(f"semgrpo: config key {k} is deprecated; use {RENAMED_KEYS[k]} (the old name "
                                   "works until 0.2)" for k in ("train.lr", "train.deepspeed", "train.save_every",
                                                                "eval.every_steps", "eval.ood_samples",
                                                                "train.max_steps"))
    # Every old name has its new key in the tree; the new names print nothing.
    assert set(RENAMED_KEYS.values()) <= set(valid_keys())
    load_config([], ["grpo.lr=1e-3", "run.save_every=3", "tax_meter.every_steps=2"])
    assert _deprecations(capsys.readouterr().err) == []


def test_the_old_names_go_at_the_release_the_deprecation_line_names():
    """The line promises the old names until DEPRECATED_UNTIL; the package must not reach that version with them."""
    from semgrpo import __version__
    from semgrpo.config.renames import DEPRECATED_UNTIL

    version = tuple(int(part) for part in __version__.split(".")[:2])
    until = tuple(int(part) for part in DEPRECATED_UNTIL.split("."))
    assert version < until, (f"semgrpo {__version__} has reached {DEPRECATED_UNTIL}: drop RENAMED_KEYS (and the "
                             f"README's renamed-keys paragraph), or the deprecation line is a broken promise")


def test_old_and_new_name_together(tmp_path, capsys):
    with pytest.raises(ConfigError) as err:
        load_config([], ["train.lr=1e-3", "grpo.lr=2e-3"])
    assert "train.lr" in str(err.value) and "grpo.lr" in str(err.value) and "\n" not in str(err.value)
    both = tmp_path / "both.yaml"
    both.write_text("eval:\n  every_steps: 5\ntax_meter:\n  every_steps: 6\n")
    with pytest.raises(ConfigError, match=r"eval\.every_steps=5 and tax_meter\.every_steps=6 \(.*both\.yaml\)"):
        load_config([both])
    # The same value twice is no conflict (5e-7 is a string to YAML, 5.0e-7 a float: the same learning rate).
    assert load_config([], ["train.lr=5e-7", "grpo.lr=5.0e-7"]).grpo.lr == 5e-7
    # Across sources the later one wins as for any key: a new-style file, an old-style override.
    new = tmp_path / "new.yaml"
    new.write_text("grpo:\n  lr: 1.0e-3\n")
    assert load_config([new], ["train.lr=2.0e-3"]).grpo.lr == 2.0e-3
    # An unknown key under an old section is still an unknown key.
    with pytest.raises(ConfigError, match="unknown config key 'train.lrr'"):
        load_config([], ["train.lrr=1"])


def test_saved_config_with_old_sections_is_upgraded():
    from semgrpo.config import Config, to_dict, upgrade_saved_config

    saved = to_dict(Config())
    for key in ("lr", "scheduler", "warmup_ratio", "epochs", "max_steps"):
        del saved["grpo"][key]
    del saved["run"], saved["tax_meter"]
    saved["train"] = {"deepspeed": "ds.json", "lr": 1e-3, "scheduler": "constant", "warmup_ratio": 0.0,
                      "weight_decay": 0.1, "epochs": 1.0, "max_steps": 8, "save_every": 50, "keep_last": 2,
                      "log_every": 1, "sample_every": 10}
    saved["eval"] = {"every_steps": 5, "ood_passages": "p.json", "ood_samples": 32, "ood_max_tokens": 128,
                     "batch_size": 8}
    before = repr(saved)
    up = upgrade_saved_config(saved)
    assert repr(saved) == before  # the input is left alone
    assert "train" not in up and "eval" not in up
    assert (up["grpo"]["lr"], up["grpo"]["max_steps"], up["grpo"]["group_size"]) == (1e-3, 8, 8)
    assert (up["run"]["deepspeed"], up["run"]["weight_decay"]) == ("ds.json", 0.1)
    assert up["tax_meter"] == saved["eval"]
    assert set(up) == set(to_dict(Config()))
    assert upgrade_saved_config(to_dict(Config())) == to_dict(Config())
