"""semgrpo.rollout: merged sampling equals the LoRA forward, and the base comes back bit-identical."""
from __future__ import annotations

import pytest
import torch
from _tolerance import assert_close_scaled, chain_rtol
from peft import LoraConfig, get_peft_model
from transformers import Qwen3Config, Qwen3ForCausalLM

from semgrpo.rollout import merged_adapter, sample_completions

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _lora_model(dtype=torch.float32, **lora_kwargs):
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, pad_token_id=0, eos_token_id=1,
                      bos_token_id=None)
    model = get_peft_model(Qwen3ForCausalLM(cfg), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                             target_modules=TARGETS, **lora_kwargs))
    with torch.no_grad():  # a trained-looking adapter: lora_B is zero at init, which would hide any error
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return model.to(dtype).eval()


def _base_weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}


IDS = torch.tensor([[0, 0, 5, 9, 13], [7, 3, 2, 11, 4]])
MASK = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])


def test_merged_logits_equal_the_lora_forward_and_base_is_restored():
    model = _lora_model()
    before = _base_weights(model)
    with torch.no_grad():
        lora_logits = model(input_ids=IDS, attention_mask=MASK).logits
        with model.disable_adapter():
            base_logits = model(input_ids=IDS, attention_mask=MASK).logits
        with merged_adapter(model) as m:
            merged_logits = m(input_ids=IDS, attention_mask=MASK).logits
        after_logits = model(input_ids=IDS, attention_mask=MASK).logits
    assert (lora_logits - base_logits).abs().max() > 0.1  # the adapter matters
    # W + s B A vs x W + s (x A) B: summation order only, over the 2 layers' reductions and the head's (<= 64 terms)
    assert_close_scaled(merged_logits, lora_logits, chain_rtol(torch.float32, 64, depth=2 * 2 + 1))
    torch.testing.assert_close(after_logits, lora_logits, atol=0, rtol=0)
    for name, w in _base_weights(model).items():
        assert torch.equal(w, before[name]), name


def test_greedy_rollout_with_merged_adapter_equals_the_lora_policy():
    model = _lora_model()
    kw = dict(max_new_tokens=10, eos_ids=[1], pad_id=0, greedy=True)
    with merged_adapter(model) as m:
        merged = sample_completions(m, IDS, MASK, **kw)
    assert torch.equal(merged, sample_completions(model, IDS, MASK, **kw))


def test_bf16_base_is_bit_identical_after_many_merges():
    model = _lora_model(torch.bfloat16)
    before = _base_weights(model)
    for _ in range(5):
        with merged_adapter(model) as m, torch.no_grad():
            m(input_ids=IDS, attention_mask=MASK)
    for name, w in _base_weights(model).items():
        assert torch.equal(w, before[name]), name


def test_weights_are_restored_when_the_body_raises():
    model = _lora_model()
    before = _base_weights(model)
    with pytest.raises(RuntimeError, match="boom"), merged_adapter(model):
        raise RuntimeError("boom")
    for name, w in _base_weights(model).items():
        assert torch.equal(w, before[name]), name
    assert not any(layer.disable_adapters for layer in model.modules() if hasattr(layer, "lora_A"))


def test_disabled_is_a_no_op():
    model = _lora_model()
    with merged_adapter(model, enabled=False) as m:
        assert m is model
        assert not any(layer.disable_adapters for layer in model.modules() if hasattr(layer, "lora_A"))


def test_rejects_models_it_cannot_merge():
    plain = Qwen3ForCausalLM(Qwen3Config(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2, head_dim=8))
    with pytest.raises(ValueError, match="no LoRA layers"), merged_adapter(plain):
        pass
    dora = _lora_model(use_dora=True)
    before = _base_weights(dora)
    with pytest.raises(ValueError, match="DoRA"), merged_adapter(dora):
        pass
    for name, w in _base_weights(dora).items():
        assert torch.equal(w, before[name]), name
