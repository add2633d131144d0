"""LoRA runs: the adapter chain merged into the base, or folded into one adapter over the original base.

A run started from another (`model.init_from`) trained its LoRA on the merged policy of that run, so its
weights are W0 + s1 B1 A1 + s2 B2 A2 + ... with s = lora_alpha / r of each adapter (rsLoRA: / sqrt(r)).
Merging adds the deltas one after another (as `modeling.load_policy` does before training). Folding
writes the same sum as a single LoRA: per module, A = [A1; A2; ...] (rows stacked) and B = [s1 B1, s2 B2,
...] (columns side by side) is one adapter of rank r1 + r2 + ... with scaling 1, so B A equals the sum
exactly (up to fp32 rounding). Its config says lora_alpha = r, and modules whose rank differs (the chain's
adapters targeted different modules) get their rank and alpha through rank_pattern/alpha_pattern, so
every module's scaling is 1 for PEFT, and for servers that read one global alpha / r (vLLM) too.
"""
from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from semgrpo.config import ConfigError
from semgrpo.modeling import _Loading

FOLDED_NAME = "default"  # the one adapter of a folded export (PEFT saves it without a sub-folder)


def merge_chain(model, adapters: Sequence[Path], say: Callable[[str], None]):
    """`model` (the base, fp32) with every adapter of the chain merged in, in order; a plain HF model."""
    from peft import PeftModel

    for i, adapter in enumerate(adapters, 1):
        say(f"merging adapter {i}/{len(adapters)} ({adapter})")
        with _Loading("adapter", str(adapter)):
            model = PeftModel.from_pretrained(model, str(adapter))
        model = model.merge_and_unload()
    return model


def fold_chain(model, adapters: Sequence[Path], say: Callable[[str], None]):
    """One PeftModel over `model` (the base, fp32) whose single adapter equals the whole chain."""
    from peft import PeftModel, get_peft_model

    names = [f"stage{i}" for i in range(len(adapters))]
    say(f"reading adapter 1/{len(adapters)} ({adapters[0]})")
    with _Loading("adapter", str(adapters[0])):
        stacked = PeftModel.from_pretrained(model, str(adapters[0]), adapter_name=names[0])
    for i, (name, adapter) in enumerate(zip(names[1:], adapters[1:]), 2):
        say(f"reading adapter {i}/{len(adapters)} ({adapter})")
        with _Loading("adapter", str(adapter)):
            stacked.load_adapter(str(adapter), adapter_name=name)
    for name, adapter in zip(names, adapters):
        _check_plain_lora(stacked.peft_config[name], adapter)
    pieces = _scaled_pieces(stacked, names, adapters)
    base = stacked.unload()  # the LoRA layers out, nothing merged: the original base again
    ranks = {module: sum(a.shape[0] for a, _ in parts) for module, parts in pieces.items()}
    say(f"folding {len(adapters)} adapter(s) into one LoRA of rank {max(ranks.values())} "
        f"over {len(ranks)} modules")
    folded = get_peft_model(base, _folded_config(base, ranks))
    with torch.no_grad():
        for module, parts in pieces.items():
            layer = folded.base_model.model.get_submodule(module)
            a = torch.cat([a for a, _ in parts], dim=0)
            b = torch.cat([b for _, b in parts], dim=1)
            layer.lora_A[FOLDED_NAME].weight.copy_(a)
            layer.lora_B[FOLDED_NAME].weight.copy_(b)
    return folded


def _check_plain_lora(cfg, adapter: Path) -> None:
    """Folding covers plain LoRA on linear layers; anything else is refused (the merged export handles it)."""
    unsupported = []
    if str(getattr(cfg, "peft_type", "")).rsplit(".", 1)[-1] != "LORA":
        unsupported.append(f"peft_type {cfg.peft_type}")
    if getattr(cfg, "use_dora", False):
        unsupported.append("DoRA")
    if getattr(cfg, "bias", "none") != "none" or getattr(cfg, "lora_bias", False):
        unsupported.append("trained biases")
    if getattr(cfg, "modules_to_save", None):
        unsupported.append(f"modules_to_save {list(cfg.modules_to_save)}")
    if getattr(cfg, "trainable_token_indices", None):
        unsupported.append("trainable_token_indices")
    if unsupported:
        raise ConfigError(f"--adapter-only folds plain LoRA adapters only; {adapter} uses {', '.join(unsupported)} "
                          "(export the merged model instead: drop --adapter-only)")


def _scaled_pieces(stacked, names: list[str], adapters: Sequence[Path]) -> dict[str, list[tuple]]:
    """{module name: [(A_k, s_k * B_k) for each adapter k that targets it, in chain order]}, in fp32."""
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.lora import LoraLayer

    pieces: dict[str, list[tuple]] = defaultdict(list)
    for module_name, layer in stacked.base_model.model.named_modules():
        if not isinstance(layer, LoraLayer):
            continue
        for name, adapter in zip(names, adapters):
            if name in getattr(layer, "lora_embedding_A", {}) or (
                    name in layer.lora_A and (not isinstance(layer, LoraLinear) or layer.fan_in_fan_out)):
                raise ConfigError(f"--adapter-only folds LoRA on linear layers only; {adapter} adapts "
                                  f"{module_name} ({type(layer.get_base_layer()).__name__}): drop --adapter-only")
            if name in layer.lora_A:
                a = layer.lora_A[name].weight.detach().float()
                b = layer.lora_B[name].weight.detach().float() * float(layer.scaling[name])
                pieces[module_name].append((a.clone(), b))
    if not pieces:
        raise ConfigError(f"the adapters {[str(a) for a in adapters]} adapt no module of the base")
    return dict(pieces)


def _folded_config(base, ranks: dict[str, int]):
    """A LoRA config with scaling 1 everywhere: lora_alpha = r, per-module exceptions by exact name."""
    from peft import LoraConfig

    r = max(ranks.values())
    odd = {re.escape(module): rank for module, rank in ranks.items() if rank != r}
    return LoraConfig(r=r, lora_alpha=r, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                      target_modules=_target_modules(base, set(ranks)), rank_pattern=odd, alpha_pattern=dict(odd))


def _target_modules(base, targeted: set[str]) -> list[str]:
    """Module suffixes (q_proj, ...) when they select exactly the targeted modules, else the full names."""
    suffixes = {name.rsplit(".", 1)[-1] for name in targeted}
    selected = {name for name, module in base.named_modules()
                if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in suffixes}
    return sorted(suffixes) if selected == targeted else sorted(targeted)
