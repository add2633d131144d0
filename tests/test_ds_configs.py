"""The DeepSpeed JSONs we ship: each is a config DeepSpeed accepts, and the offload one updates with DeepSpeed's
CPU Adam, whose step equals torch's AdamW."""
import json
from pathlib import Path

import pytest
import torch
from _tolerance import stored_rtol

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "ds_configs").glob("*.json"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_is_accepted_by_deepspeed(path):
    from deepspeed.runtime.config import DeepSpeedConfig

    from semgrpo.ds_config import load_ds_config

    ds, _ = load_ds_config(str(path), dtype="bf16", world_size=8)
    parsed = DeepSpeedConfig(ds)
    assert parsed.zero_optimization_stage == ds["zero_optimization"]["stage"]
    if path.stem == "zero3_plus_plus":  # hpZ within an 8-GPU node, int8 weights, int4 gradients
        zero = parsed.zero_config
        assert zero.zero_hpz_partition_size == 8 and zero.zero_quantized_weights and zero.zero_quantized_gradients


def _one_step(ds_path, tmp_path):
    from _ds_single import init_single_process

    from semgrpo.modeling import build_engine

    init_single_process()
    ds = json.loads(Path(ds_path).read_text())
    ds.update(train_micro_batch_size_per_gpu=2, gradient_accumulation_steps=1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    engine = build_engine(model, ds, lr=0.05, weight_decay=0.1, scheduler="constant", warmup_ratio=0.0,
                          total_updates=1)
    x = torch.linspace(-1, 1, 16).reshape(2, 8)
    loss = engine(x).pow(2).sum()
    engine.backward(loss)
    engine.step()
    import deepspeed

    params = list(engine.module.parameters())
    with deepspeed.zero.GatheredParameters(params):
        return type(engine.optimizer.optimizer).__name__, [p.detach().clone() for p in params]


def test_offload_config_steps_with_deepspeeds_cpu_adam_like_torch_adamw(tmp_path):
    kind, offloaded = _one_step(ROOT / "ds_configs" / "zero3_offload.json", tmp_path)
    assert kind == "DeepSpeedCPUAdam"
    reference_kind, reference = _one_step(ROOT / "ds_configs" / "zero3.json", tmp_path)
    assert reference_kind == "AdamW"
    # one AdamW step from the same gradients by two implementations (vectorised vs per tensor): each weight's
    # update is a few fp32 operations, stored back into the fp32 weight
    for a, b in zip(offloaded, reference):
        torch.testing.assert_close(a, b, rtol=2 * stored_rtol(torch.float32) * 8, atol=2 * stored_rtol(torch.float32))
