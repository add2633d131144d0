"""The model's shape, read from its config.json on the meta device: no weights are loaded."""
from __future__ import annotations

import functools
from dataclasses import dataclass

from semgrpo.config import ConfigError, LoraConfig


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs to know about the model, read from config.json without weights."""

    name: str  # the model class, e.g. Qwen3ForCausalLM
    params: int  # the base model's parameters, tied weights once
    largest_layer: int  # parameters of the largest module (its own, not its children's): DeepSpeed's term
    layers: int
    kv_heads: int
    head_dim: int
    vocab: int
    hidden: int
    lora_params: int = 0  # the adapters of the configured LoRA, r * (in + out) per targeted nn.Linear
    lora_targeted: int = 0  # base weights of those linears (the copy merge_adapter_for_generation makes)

    @property
    def kv_values_per_token(self) -> int:
        """Keys and values every layer caches for one token."""
        return self.layers * 2 * self.kv_heads * self.head_dim


def model_shape(path: str, lora: LoraConfig) -> ModelShape:
    """The shape of the model at `path` with the configured LoRA; no weights are read.

    Raises:
        ConfigError: `path` is not a model directory with a config.json that builds a causal LM, or a LoRA
            target is not a module of the model.
    """
    targets = tuple(lora.target_modules) if lora.enabled else ()
    return _model_shape(path, targets, lora.r)


@functools.lru_cache(maxsize=4)  # --plan-only of train_grpo.py with a cold start plans two stages
def _model_shape(path: str, targets: tuple[str, ...], r: int) -> ModelShape:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from semgrpo.modeling import check_model_source

    check_model_source(path, "model.path")
    try:
        config = AutoConfig.from_pretrained(path)
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            model = AutoModelForCausalLM.from_config(config)
    except Exception as exc:  # transformers raises ValueError, OSError, KeyError, ... for a config it cannot use
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"model.path {path!r}: cannot build the model from its config.json "
                          f"({type(exc).__name__}: {first})") from None
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in present]
    if missing:
        raise ConfigError(f"model.lora.target_modules {missing} are not modules of this model")
    lora_params = targeted = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets:
            lora_params += r * (module.in_features + module.out_features)
            targeted += module.weight.numel()
    text = config.get_text_config()
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    output = model.get_output_embeddings()
    return ModelShape(
        name=type(model).__name__,
        params=sum(p.numel() for p in model.parameters()),  # a tied (shared) tensor is yielded once
        largest_layer=max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()),
        layers=text.num_hidden_layers,
        kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        vocab=output.weight.shape[0] if output is not None else text.vocab_size,
        hidden=text.hidden_size,
        lora_params=lora_params,
        lora_targeted=targeted,
    )
