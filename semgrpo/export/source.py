"""What an export reads: the run, its checkpoint, the configuration that checkpoint was trained with, the
base model and tokenizer, the adapters to fold in (LoRA runs) and the dtype to write.

Every check here only reads, so a bad RUN_DIR, checkpoint or base fails before anything is written.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from semgrpo.checkpoint import (
    ADAPTER_DIR,
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    ENGINE_TAG,
    checkpoint_config,
    find_latest_checkpoint,
    is_complete_checkpoint,
    list_checkpoints,
)
from semgrpo.checkpoint.integrity import verify_checkpoint
from semgrpo.checkpoint.state_files import CheckpointError
from semgrpo.config import ConfigError, upgrade_saved_config
from semgrpo.eval.models import check_adapter
from semgrpo.lineage import adapter_chain
from semgrpo.modeling import TORCH_DTYPES, check_model_source

# The names a model's config.json gives its dtype, as semgrpo names them.
_CONFIG_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


@dataclass(frozen=True)
class ExportSource:
    """One checkpoint of one run, resolved: everything an export needs to read."""

    run_dir: Path
    checkpoint: Path
    config_file: Path  # where `config` came from (the checkpoint's own, else the run's)
    config: dict
    base: str  # model.path
    tokenizer: str  # model.tokenizer, else model.path
    dtype: str  # bf16 | fp16 | fp32: what is written
    full_parameter: bool  # model.lora.enabled is false: the weights are the ZeRO shards under state/
    adapters: tuple[Path, ...] = ()  # LoRA runs: the init_from chain, oldest first, then the run's own

    @property
    def engine_state(self) -> Path:
        return self.checkpoint / ENGINE_TAG


def resolve_source(run_dir: str | Path, *, checkpoint: str | Path | None = None,
                   dtype: str | None = None) -> ExportSource:
    """RUN_DIR (and optionally one of its checkpoints) -> an ExportSource, or a UserError naming the problem."""
    run = _run_dir(Path(run_dir))
    ckpt = _checkpoint(run, checkpoint)
    config_file, cfg = _config(run, ckpt)
    model = cfg["model"]

    def where(key: str) -> str:  # names the setting and the file it was read from in error messages
        return f"{key} (recorded in {config_file})"

    base = check_model_source(str(model.get("path") or ""), where("model.path"))
    tokenizer = check_model_source(str(model.get("tokenizer") or base),
                                   where("model.tokenizer" if model.get("tokenizer") else "model.path"),
                                   kind="tokenizer")
    lora = model.get("lora") if isinstance(model.get("lora"), dict) else {}
    full = lora.get("enabled", True) is False
    adapters: tuple[Path, ...] = ()
    if full:
        state = ckpt / ENGINE_TAG
        if not state.is_dir() or not any(state.glob("*_model_states.pt")):
            raise CheckpointError(f"checkpoint {str(ckpt)!r} holds no DeepSpeed engine state under {ENGINE_TAG}/ "
                                  f"(a full-parameter run's weights are its ZeRO shards)")
    else:
        if not (ckpt / ADAPTER_DIR / "adapter_config.json").is_file():
            raise CheckpointError(f"checkpoint {str(ckpt)!r} has no {ADAPTER_DIR}/ (model.lora.enabled is true "
                                  f"in {config_file}); the checkpoint is incomplete")
        adapters = tuple(adapter_chain(str(ckpt)))
        for adapter in adapters:
            check_adapter(adapter)
    return ExportSource(run_dir=run, checkpoint=ckpt, config_file=config_file, config=cfg, base=base,
                        tokenizer=tokenizer, dtype=dtype or _run_dtype(str(model.get("dtype") or "auto"), base),
                        full_parameter=full, adapters=adapters)


def _run_dir(run: Path) -> Path:
    if not run.exists():
        raise ConfigError(f"RUN_DIR {str(run)!r} does not exist")
    if not run.is_dir():
        raise ConfigError(f"RUN_DIR {str(run)!r} is a file; expected a training run's output_dir")
    if not (run / CHECKPOINTS_DIR).is_dir() and not (run / CONFIG_FILE).is_file():
        raise ConfigError(f"RUN_DIR {str(run)!r} is not a run (no {CONFIG_FILE} and no {CHECKPOINTS_DIR}/ in it)")
    return run


def _checkpoint(run: Path, named: str | Path | None) -> Path:
    """The named checkpoint (checked), else the run's newest complete intact one."""
    if named is None:
        latest = find_latest_checkpoint(run)
        if latest is not None:
            return latest
        if list_checkpoints(run):
            raise CheckpointError(f"RUN_DIR {str(run)!r}: every complete checkpoint is damaged (see the warnings "
                                  "above); nothing intact to export")
        raise CheckpointError(f"RUN_DIR {str(run)!r} has no complete checkpoint under {CHECKPOINTS_DIR}/ "
                              "(the run saved none yet, or every save was cut short)")
    path = Path(named)
    if not path.exists() and (run / CHECKPOINTS_DIR / path).exists():  # `--checkpoint step-00000004`
        path = run / CHECKPOINTS_DIR / path
    if not path.exists():
        raise CheckpointError(f"--checkpoint {str(named)!r} does not exist")
    if path.resolve().parent != (run / CHECKPOINTS_DIR).resolve():
        raise CheckpointError(f"--checkpoint {str(named)!r} is not a checkpoint of RUN_DIR {str(run)!r} "
                              f"(expected {run / CHECKPOINTS_DIR}/step-NNNNNNNN)")
    if not is_complete_checkpoint(path):
        raise CheckpointError(f"--checkpoint {str(named)!r} is not a complete checkpoint (a step-NNNNNNNN "
                              "directory holding COMPLETE: its save did not finish)")
    problem = verify_checkpoint(path)
    if problem is not None:
        raise CheckpointError(f"--checkpoint {str(named)!r} is damaged: {problem}")
    return path


def _config(run: Path, ckpt: Path) -> tuple[Path, dict]:
    """The configuration the checkpoint was trained with: its own config.json, else the run's."""
    cfg = checkpoint_config(ckpt)
    file = ckpt / CONFIG_FILE
    if cfg is None:
        file = run / CONFIG_FILE
        if not file.is_file():
            raise ConfigError(f"neither checkpoint {str(ckpt)!r} nor RUN_DIR {str(run)!r} holds a {CONFIG_FILE}; "
                              "cannot tell which base model the run trained")
        try:
            cfg = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{file}: unreadable run config ({exc})") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
        raise ConfigError(f"{file}: not a semgrpo run config (no 'model' section)")
    return file, upgrade_saved_config(cfg)


def _run_dtype(name: str, base: str) -> str:
    """The config's model.dtype; "auto" is the dtype the base's config.json records, else fp32."""
    if name in TORCH_DTYPES:
        return name
    if name != "auto":
        raise ConfigError(f"model.dtype {name!r} is not one of auto, {', '.join(TORCH_DTYPES)}; pass --dtype")
    from transformers import AutoConfig

    try:
        recorded = AutoConfig.from_pretrained(base).dtype
    except Exception:  # a config transformers cannot parse: the base load reports it properly later
        return "fp32"
    recorded = str(recorded).removeprefix("torch.") if recorded is not None else ""
    return _CONFIG_DTYPES.get(recorded, "fp32")
