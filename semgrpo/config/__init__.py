"""Run configuration: one dataclass tree with defaults, loaded from YAML plus `key=value` overrides.

Every knob of the method (paper sections 3-4, Appendix A) lives here with the paper's value as its
default; `configs/*.yaml` only say what differs. The DeepSpeed JSON (`run.deepspeed`) stays pure
DeepSpeed: batch sizes are read from it and cross-checked against the group size (see batching.py).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from semgrpo.config.values import coerce
from semgrpo.errors import UserError

PAPER_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class ConfigError(UserError):
    """A user error in the run configuration (unknown key, bad value, missing file)."""


@dataclass
class LoraConfig:
    enabled: bool = True
    r: int = 64
    alpha: int = 128
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(PAPER_LORA_TARGETS))


@dataclass
class ModelConfig:
    # Policy: a local directory (or a hub id, only if you name one). Empty with `demo: true`.
    path: str = ""
    # Tokenizer directory; empty = same as `path`.
    tokenizer: str = ""
    # Output directory of bin/train_sft.py (stage 1). Its adapter is merged into the base weights at
    # start, so that "adapter disabled" is the cold-start policy: the GRPO reference.
    init_from: str = ""
    # auto = bf16 on CUDA, fp32 on CPU.
    dtype: str = "auto"
    # Reentrant checkpointing (the variant PEFT + ZeRO-3 needs).
    gradient_checkpointing: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class DataConfig:
    # mt_bo_zh | mt_zh_bo | hg_bo | mt_<source>_<target> of two CLDR codes, e.g. mt_zh_km (semgrpo.prompts).
    task: str = "mt_zh_bo"
    # JSONL/Parquet file, a folder with {split}.jsonl, or a hub id you name.
    train: str = ""
    dev: str = ""
    max_prompt_length: int = 256
    # Samples whose prompt + reference exceed this many tokens are dropped (paper: 1024).
    max_sample_tokens: int = 1024


@dataclass
class SFTConfig:
    # Stage 1 (cold start): the first `samples` training records (paper: 5000, 2 epochs).
    # samples: 0 = all records (the Strong SFT baseline: 3 epochs).
    samples: int = 5000
    epochs: float = 2.0
    lr: float = 2e-5
    scheduler: str = "cosine"
    warmup_ratio: float = 0.1
    max_length: int = 1024
    # train_grpo.py runs stage 1 itself first when this is true and model.init_from is empty.
    before_grpo: bool = False


@dataclass
class RewardConfig:
    # Reward encoder f: a sentence-transformers directory (frozen during RL).
    encoder: str = ""
    # Components of the reward; the paper's default and its ablations:
    # [semantic] | [semantic, language] | + bleu | + length.
    # Beside the built-in names: a plugin `package.module:callable` (named after the callable) and a remote
    # reward `http://host:port/path` (named `remote`); `name=spec` names either (semgrpo/config/reward_specs.py).
    functions: list[str] = field(default_factory=lambda: ["semantic", "language"])
    # Weight of each component by name; a plugin or remote reward without one weighs 1.0.
    weights: dict[str, float] = field(
        default_factory=lambda: {"semantic": 1.5, "language": 1.0, "bleu": 1.0, "length": 1.0}
    )
    # Constructor arguments of a plugin that is a class, by name: {name: {argument: value}}.
    kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    # A remote reward's deadline per request (seconds, from connecting to the reply's last byte) and retries
    # after a 5xx reply, a timeout or a refused connection (each retry waits twice as long as the one before,
    # from 1 s); the longest reply it reads (bytes, 64 MiB).
    remote_timeout: float = 60.0
    remote_retries: int = 2
    remote_max_bytes: int = 64 * 2**20
    # Threshold of R_sim: a number, or "auto" = mean similarity of the cold-start policy's greedy
    # outputs on `tau_samples` dev prompts, measured before the first step and stored with the run.
    tau: Any = "auto"
    tau_samples: int = 64
    # Target script of R_lang; empty = the task's target script.
    script: str = ""
    min_script_ratio: float = 1.0
    max_foreign: int = 0
    # Length constraint: 1 when len(completion) / len(reference), in characters, is within [lo, hi].
    length_ratio_min: float = 0.5
    length_ratio_max: float = 2.0
    encoder_batch_size: int = 256


@dataclass
class GRPOConfig:
    group_size: int = 8
    temperature: float = 0.8
    top_p: float = 0.9
    max_completion_length: int = 256
    # KL coefficient; 0 skips the reference pass entirely.
    beta: float = 0.0
    # Clip range [1 - eps_low, 1 + eps_high] of the importance ratio; for cispo eps_high is the ratio's absolute cap.
    eps_low: float = 0.2
    eps_high: float = 0.2
    # The loss (TRL 1.16's names and formulas; README "What one update optimizes"): grpo (the paper's), bnpo,
    # dr_grpo, dapo (TRL's default), cispo, sapo, luspo, vespo.
    loss_type: str = "grpo"
    # token: one importance ratio per token; sequence: one per completion, exp of its mean log-ratio (GSPO).
    importance_sampling_level: str = "token"
    # Upper bound of the unclipped ratio (two-sided clipping) for the clip loss types; null = off.
    delta: float | None = None
    # Multiply the per-token KL by the importance ratio (unbiased KL gradient; TRL's default). Only with beta > 0.
    use_bias_correction_kl: bool = True
    # Leave completions cut off at max_completion_length (no eos) out of the loss; they still count in advantages.
    mask_truncated_completions: bool = False
    # sapo: gate temperatures for positive / other advantages.
    sapo_temperature_pos: float = 1.0
    sapo_temperature_neg: float = 1.05
    # vespo: gamma weight exp(lambda + k log w - lambda w) of the sequence ratio w, for non-negative / negative
    # advantages.
    vespo_k_pos: float = 2.0
    vespo_lambda_pos: float = 3.0
    vespo_k_neg: float = 3.0
    vespo_lambda_neg: float = 2.0
    scale_rewards: str = "group"
    # Added to the std in the advantage's denominator (TRL's 1e-4).
    advantage_eps: float = 1e-4
    # Optimizer updates per generated batch (mu); old log-probs are computed only when > 1.
    num_iterations: int = 1
    # Generation batch (completions) per call of generate; 0 = all of this rank's completions.
    generation_batch_size: int = 0
    # Gather the full parameter set once per rollout under ZeRO-3 (fast). false = synced_gpus
    # generation that gathers layer by layer (for models that do not fit on one device).
    gather_for_generation: bool = True
    # Sample with the LoRA adapter merged into a temporary copy of the base weights (rollout.merged_adapter):
    # faster decoding for one extra copy of the targeted weights during the rollout.
    merge_adapter_for_generation: bool = False
    # Under ZeRO-3 with gather_for_generation: run the step's first policy forward/backward on the
    # parameters still gathered for generation (ZeRO hooks off) instead of fetching layer by layer again.
    # Holds the full parameters through that backward; false if that does not fit.
    gathered_policy_pass: bool = True
    # Optimisation of stage 2 (stage 1 has its own under sft.*).
    lr: float = 5e-7
    scheduler: str = "constant"
    warmup_ratio: float = 0.0
    epochs: float = 1.0
    # > 0 overrides epochs. A step = one generated batch (and num_iterations optimizer updates).
    max_steps: int = -1
    # Dynamic sampling: when groups come back flat (every completion scored the same), draw the next prompts
    # and sample again, up to max_resample more rounds, until each rank holds its full number of informative
    # groups; then train on what it has. Steps stay steps: the run draws prompts ahead of the step count.
    dynamic_sampling: bool = False
    max_resample: int = 4


@dataclass
class RunConfig:
    # Settings both stages (SFT and GRPO) read: the engine, weight decay, and the save/log cadence.
    # DeepSpeed JSON: pure DeepSpeed; micro batch and accumulation are read from it.
    deepspeed: str = "ds_configs/zero3.json"
    weight_decay: float = 0.0
    save_every: int = 50
    keep_last: int = 2
    log_every: int = 1
    # Write a few completions to the trackers every this many GRPO steps (0 = never).
    sample_every: int = 10
    # Where scalars and completion tables go besides metrics.jsonl (always written; summary.json reads it):
    # tensorboard, wandb (offline when there is no network), jsonl (adds samples.jsonl), or none.
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    # GPU memory per device in GiB that the memory plan (semgrpo/memory_plan.py, printed before the model
    # loads) warns against; 0 = the first CUDA device's size, and no check on a machine without one.
    gpu_memory_gib: float = 0.0


@dataclass
class TaxMeterConfig:
    # Live alignment-tax meter during GRPO (semgrpo/eval/tax_meter.py; bin/evaluate.py has its own flags):
    # every this many GRPO steps, OOD token NLL and KL(reference || policy) on fixed passages, logged as
    # tax/*. 0 = off.
    every_steps: int = 0
    # CMRC/SQuAD JSON (contexts), JSONL with a text/context field, or a text file (a passage per line).
    # Empty with `demo: true` = the demo's plain source-language (Chinese) CLDR text.
    ood_passages: str = ""
    ood_samples: int = 32
    ood_max_tokens: int = 128
    batch_size: int = 8


@dataclass
class DemoConfig:
    # Build the offline demo (CLDR pairs, tiny tokenizer/policy/encoder) and fill the empty paths from it;
    # `demo: true` / `demo=true` sets it (config/renames.py: demo was a plain boolean before 0.3).
    enabled: bool = False
    # CLDR codes: the language the demo teaches (bo, ug, am, km...) and the one it translates from (zh or en).
    language: str = "bo"
    source: str = "zh"


@dataclass
class Config:
    output_dir: str = "runs/grpo"
    # auto = continue from the newest complete checkpoint in output_dir if any; or a checkpoint path; or "".
    resume: str = "auto"
    # A fresh start (resume: "") into an output_dir that holds checkpoints is refused unless this is
    # true; then the old run's checkpoints and logs are deleted first (semgrpo/run_folder.py).
    overwrite: bool = False
    seed: int = 0
    demo: DemoConfig = field(default_factory=DemoConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    run: RunConfig = field(default_factory=RunConfig)
    tax_meter: TaxMeterConfig = field(default_factory=TaxMeterConfig)


# ---------------------------------------------------------------------------------------------------
# Loading


def valid_keys(cls=Config, prefix="") -> list[str]:
    """All dotted keys of the tree, for error messages and the README reference."""
    keys = []
    for f in dataclasses.fields(cls):
        sub = _dataclass_type(cls, f)
        if sub is not None:
            keys += valid_keys(sub, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys



def load_config(paths: str | Path | list | None = None, overrides: list[str] = ()) -> Config:
    """Build a Config from defaults, then YAML files (later ones win), then `key=value` overrides.

    Old key names (`renames.RENAMED_KEYS`) are applied under their new names, with one deprecation line per old
    name on stderr; an old and a new name for the same key in one source with different values is an error.
    """
    from semgrpo.config.renames import renamed  # it builds scratch Configs from this module

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
        for key, value in renamed(list(_flatten(tree)), str(path), warned):
            set_key(cfg, key, value, origin=str(path))
    items = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        items.append((key.strip(), value))
    for key, value in renamed(items, "command line", warned):
        set_key(cfg, key, value, origin="command line")
    from semgrpo.config.checks import validate  # the checks import this module

    validate(cfg)
    return cfg


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


def _merge_mapping(old: dict, new: dict) -> dict:
    """`old` updated in place with `new`, one level deep for nested mappings (reward.kwargs.<name>)."""
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(old.get(key), dict):
            old[key] = {**old[key], **value}
        else:
            old[key] = value
    return old


# Keys whose value is a mapping (a YAML mapping under them is their value, not a section).
MAPPING_KEYS = frozenset({"reward.weights", "reward.kwargs"})

_SECTIONS = frozenset(f.name for f in dataclasses.fields(Config) if dataclasses.is_dataclass(f.default_factory))


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


# ---------------------------------------------------------------------------------------------------
# helpers


def _flatten(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted not in MAPPING_KEYS:
            yield from _flatten(value, dotted + ".")
        else:
            yield dotted, value


def _field_type(cls, f):
    return typing.get_type_hints(cls)[f.name]


def _dataclass_type(cls, f):
    t = _field_type(cls, f)
    return t if dataclasses.is_dataclass(t) else None


def _typed(key: str, value: Any, hint) -> Any:
    """`value` as the type `hint` of key `key` (config/values.py), or a ConfigError saying what was expected."""
    try:
        return coerce(key, value, hint)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


# Re-exported: callers read saved configs through `semgrpo.config.upgrade_saved_config`.
from semgrpo.config.renames import RENAMED_KEYS as RENAMED_KEYS  # noqa: E402
from semgrpo.config.renames import upgrade_saved_config as upgrade_saved_config  # noqa: E402
