"""Load the policy (+LoRA), its tokenizer and the frozen reward encoder; wrap the policy in DeepSpeed."""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from semgrpo.config import ConfigError, LoraConfig, ModelConfig
from semgrpo.files import is_hub_id
from semgrpo.lineage import adapter_chain


def resolve_dtype(name: str) -> str:
    """auto -> bf16 on CUDA, fp32 on CPU (CPU bf16 matmuls are slow and imprecise)."""
    if name == "auto":
        return "bf16" if torch.cuda.is_available() else "fp32"
    return name


TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "tokenizer.model",
                    "spiece.model", "sentencepiece.bpe.model")


def check_model_source(path: str, what: str, *, kind: str = "model") -> str:
    """A local directory, or a hub id the user named explicitly; anything else is a clear error.

    A local directory is checked without loading it: not empty, a config.json (kind "model") or tokenizer
    files (kind "tokenizer"), and the header of every safetensors file readable (a truncated copy fails here).
    """
    if not path:
        raise ConfigError(f"{what} is not set")
    if Path(path).exists():
        _check_local_dir(Path(path), what, kind)
        return path
    if is_hub_id(path):
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise ConfigError(f"{what} {path!r} does not exist locally and HF_HUB_OFFLINE=1 forbids the hub")
        return path
    raise ConfigError(f"{what} {path!r} does not exist")


def _check_local_dir(root: Path, what: str, kind: str) -> None:
    if not root.is_dir():
        raise ConfigError(f"{what} {str(root)!r} is a file; expected a model directory")
    if not any(root.iterdir()):
        raise ConfigError(f"{what} {str(root)!r} is an empty directory")
    if kind == "tokenizer":
        if not any((root / name).is_file() for name in _TOKENIZER_FILES):
            raise ConfigError(f"{what} {str(root)!r} holds no tokenizer files "
                              f"(looked for {', '.join(_TOKENIZER_FILES)})")
        return
    if not (root / "config.json").is_file():
        raise ConfigError(f"{what} {str(root)!r} holds no config.json; expected a saved model directory")
    from safetensors import safe_open

    for weights in sorted(root.glob("*.safetensors")) + sorted(root.glob("*/*.safetensors")):
        try:
            with safe_open(str(weights), framework="pt"):
                pass
        except Exception as exc:  # SafetensorError (a plain Exception subclass), OSError
            raise ConfigError(f"{what}: {weights} is not a readable safetensors file "
                              f"(truncated or corrupt: {_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class _Loading:
    """`with _Loading(what, path):` turns a loader's failure on the user's files into one ConfigError line.

    Loaders raise many types for a bad file (OSError, ValueError, SafetensorError, the tokenizers library's
    bare Exception), so this catches Exception; a ConfigError passes through unchanged.
    """

    def __init__(self, what: str, path: str):
        self.what, self.path = what, path

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or isinstance(exc, ConfigError) or not isinstance(exc, Exception):
            return False
        raise ConfigError(f"{self.what} {self.path!r} could not be loaded ({type(exc).__name__}: "
                          f"{_first_line(exc)})") from None


def load_tokenizer(model_cfg: ModelConfig):
    path = check_model_source(model_cfg.tokenizer or model_cfg.path, "model.tokenizer", kind="tokenizer")
    return load_tokenizer_from(path, "model.tokenizer")


def load_tokenizer_from(path: str, what: str):
    """The tokenizer at `path` (a checked local directory or a hub id), set up as training and evaluation
    use it: the eos token pads when there is no pad token, and padding sits on the left.

    Raises:
        ConfigError: `what` (the setting that named `path`) cannot be loaded, or has neither pad nor eos.
    """
    from transformers import AutoTokenizer

    with _Loading(what, path):
        tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise ConfigError(f"tokenizer {path!r} has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # generation batches are left padded
    return tok


def load_policy(model_cfg: ModelConfig, *, dtype: str, ds_config: dict | None = None, lora: bool | None = None):
    """Base model, with the stage-1 adapter chain merged in when `init_from` is set, plus a fresh LoRA.

    Merging the cold-start adapter makes "adapter disabled" equal the cold-start policy, which is the
    GRPO reference, without a second copy of the model in memory. Under ZeRO-3 with several ranks
    (`ds_config`), the weights are partitioned while they load and the chain is merged layer by layer
    (semgrpo.partitioned). `lora=False` builds the same policy without an adapter (a frozen reference).
    """
    from transformers import AutoModelForCausalLM

    from semgrpo.partitioned import (
        check_whole_checkpoint_fits,
        is_partitioned,
        load_pretrained_partitioned,
        merge_adapters_partitioned,
    )

    path = check_model_source(model_cfg.path, "model.path")
    partitioned = is_partitioned(ds_config)
    with _Loading("model.path", path):
        if partitioned:
            model = load_pretrained_partitioned(path, dtype=TORCH_DTYPES[dtype], ds_config=ds_config)
        else:
            check_whole_checkpoint_fits(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=TORCH_DTYPES[dtype])
    if model_cfg.init_from:
        chain = adapter_chain(model_cfg.init_from)
        if partitioned:
            model = merge_adapters_partitioned(model, chain)
        else:
            from peft import PeftModel

            for adapter in chain:
                model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    model.config.use_cache = True
    if model_cfg.lora.enabled if lora is None else lora:
        model = add_lora(model, model_cfg.lora)
    if model_cfg.gradient_checkpointing:
        # PEFT + ZeRO-3 need the reentrant variant and inputs that require grad (TRL #2514).
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
        model.enable_input_require_grads()
    return model


def build_reference(model_cfg: ModelConfig, *, dtype: str, ds_config: dict, device):
    """The frozen starting policy of a full-parameter run (the KL term's reference), in eval mode.

    Under ZeRO-3 it is loaded partitioned like the policy and wrapped in a DeepSpeed engine without an
    optimizer, so each rank holds 1/world of it and its layers are gathered one at a time in the forward.
    Otherwise it is a whole frozen copy on this rank's device.
    """
    model = load_policy(model_cfg, dtype=dtype, ds_config=ds_config, lora=False)
    model.requires_grad_(False)
    model.eval()
    if ds_config.get("zero_optimization", {}).get("stage", 0) != 3:
        return model.to(device)
    import deepspeed

    inference = {k: v for k, v in ds_config.items() if k not in ("optimizer", "scheduler", "gradient_clipping")}
    zero = dict(inference.get("zero_optimization", {}))
    zero.pop("offload_optimizer", None)  # no optimizer; parameter offload (if any) stays
    inference["zero_optimization"] = zero
    engine, *_ = deepspeed.initialize(model=model, config=inference)
    engine.eval()
    return engine


def add_lora(model, lora: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in lora.target_modules if m not in present]
    if missing:
        raise ConfigError(f"model.lora.target_modules {missing} are not modules of this model")
    peft_cfg = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_cfg)


def load_reward_encoder(path: str, *, device: torch.device):
    """The frozen sentence encoder f of the semantic reward."""
    from sentence_transformers import SentenceTransformer

    path = check_model_source(path, "reward.encoder")
    with _Loading("reward.encoder", path):
        enc = SentenceTransformer(path, device=str(device))
    enc.eval()
    for p in enc.parameters():
        p.requires_grad_(False)
    return enc


def lr_lambda(*, scheduler: str, warmup_steps: int, total_steps: int):
    """Multiplier of the base lr at optimizer step `i`: linear warmup then constant/cosine/linear decay."""

    def factor(i: int) -> float:
        if warmup_steps and i < warmup_steps:
            return (i + 1) / warmup_steps
        if scheduler == "constant":
            return 1.0
        progress = min(1.0, (i - warmup_steps) / max(1, total_steps - warmup_steps))
        if scheduler == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return factor


def build_engine(model, ds_config: dict, *, lr: float, weight_decay: float, scheduler: str,
                 warmup_ratio: float, total_updates: int):
    """DeepSpeed engine over the trainable parameters with AdamW and our schedule.

    The AdamW is torch's, or DeepSpeed's vectorised CPU Adam when the JSON offloads the optimizer states
    to the host (`zero_optimization.offload_optimizer`): there the update runs on the CPU, where torch's
    per-tensor loop is several times slower (DeepSpeed warns about it and refuses it by default).
    """
    import deepspeed

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters (LoRA disabled and base frozen?)")
    offload = ds_config.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none")
    if offload in ("cpu", "nvme"):
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        optimizer = DeepSpeedCPUAdam(params, lr=lr, weight_decay=weight_decay, adamw_mode=True)
    else:
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warmup = int(round(warmup_ratio * total_updates))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(scheduler=scheduler, warmup_steps=warmup, total_steps=total_updates)
    )
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=schedule, config=ds_config
    )
    return engine
