"""Sampling from the LoRA policy with the adapter merged into the base weights, exactly undone afterwards.

Each LoRA linear costs two extra matmuls plus PEFT's Python per call; in a launch-bound decode step that is
a large share of the time. `merged_adapter` swaps each targeted base weight for a merged copy W + dW and
switches the adapter path off, so a decode step runs plain linears. The original weight tensors are put
back on exit (pointer swap, no arithmetic), so the base stays bit-identical; PEFT's own merge/unmerge would
round W + dW - dW in bf16 and drift a little every step.

Costs: one extra copy of the targeted weights while the context is open, and sampling from W + dW rounded
to the model dtype, which differs from the unmerged forward by float rounding (as any merged inference
engine does). Opt-in through `grpo.merge_adapter_for_generation`.
"""
from __future__ import annotations

import contextlib

import torch


def _lora_layers(model):
    from peft.tuners.lora.layer import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


@contextlib.contextmanager
def merged_adapter(model, *, enabled: bool = True):
    """`model` with its active LoRA adapters merged into the base weights (a no-op when not `enabled`).

    Raises:
        ValueError: the model has no LoRA layers, or uses a variant that does not merge into one weight
            (DoRA, a non-Linear base layer).
    """
    if not enabled:
        yield model
        return
    layers = _lora_layers(model)
    if not layers:
        raise ValueError("merge_adapter_for_generation needs a LoRA policy; the model has no LoRA layers")
    originals = []
    try:
        with torch.no_grad():
            for layer in layers:
                base = layer.get_base_layer()
                if not isinstance(base, torch.nn.Linear):
                    raise ValueError(f"merge_adapter_for_generation supports LoRA on nn.Linear only, got "
                                     f"{type(base).__name__}")
                active = [a for a in layer.active_adapters if a in layer.lora_A]
                if any(layer.use_dora.get(a, False) for a in active):
                    raise ValueError("merge_adapter_for_generation does not support DoRA adapters")
                if not active:
                    continue
                weight = base.weight
                merged = weight.data.to(torch.float32, copy=True)  # .float() would alias fp32
                for name in active:
                    merged += layer.get_delta_weight(name).float()
                originals.append((weight, weight.data))
                weight.data = merged.to(weight.dtype)
        with model.disable_adapter():
            yield model
    finally:
        for weight, data in originals:
            weight.data = data
