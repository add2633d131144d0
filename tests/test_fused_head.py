"""The fused LM head (semgrpo/fused_head.py) gives the log-probs, entropies and gradients of the model's own
logits, without them: checked against log_softmax of a plain forward's logits in float64, also for a model that
scales its logits after the head; soft-capped logits are refused by name; a partitioned head is gathered."""

from contextlib import contextmanager, nullcontext

import pytest
import torch
from _tolerance import assert_close_scaled, chain_rtol
from peft import LoraConfig, get_peft_model
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    GraniteConfig,
    GraniteForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

import semgrpo.fused_head as fused_head
from semgrpo.config import ConfigError
from semgrpo.fused_head import check_fusable, completion_logprobs, logit_multiplier, unfusable_reason
from semgrpo.ops import linear_logprobs_and_entropy
from semgrpo.rollout import Rollout

V, H = 301, 32
TEMPERATURE = 0.7
# The fused head and the plain forward compute the same fp32 logits by other paths (chunked matmul, online
# log-sum-exp): summation order only, over 2 reductions per layer and the head's, at most V terms each.
LOGP_RTOL = chain_rtol(torch.float32, V, depth=2)  # the head and its log-softmax (the body is shared)
GRAD_RTOL = chain_rtol(torch.float32, V, depth=2 * 2 + 2)  # ... and back through both layers


def _qwen3_tied():
    torch.manual_seed(0)
    return Qwen3ForCausalLM(Qwen3Config(vocab_size=V, hidden_size=H, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                        tie_word_embeddings=True))


def _llama_untied():
    torch.manual_seed(1)
    return LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=H, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False))


def _granite_scaled():
    """Granite divides its logits by logits_scaling after the head: a linear scale folded into the temperature."""
    torch.manual_seed(3)
    return GraniteForCausalLM(GraniteConfig(vocab_size=V, hidden_size=H, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2, logits_scaling=2.5))


def _rollout():
    g = torch.Generator().manual_seed(2)
    prompt_ids = torch.randint(3, V, (3, 5), generator=g)
    prompt_mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 1, 1]])
    completion_ids = torch.randint(3, V, (3, 6), generator=g)
    completion_mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]])  # a fully masked row
    completion_ids[completion_mask == 0] = 0
    return Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask)


def _reference(model, r):
    """float64 log-softmax of the logits a plain forward writes, and the entropies."""
    ids = torch.cat([r.prompt_ids, r.completion_ids], 1)
    mask = torch.cat([r.prompt_mask, r.completion_mask], 1)
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
    c = r.completion_ids.shape[1]
    lsm = torch.log_softmax(logits[:, -(c + 1):-1].double() / TEMPERATURE, -1)
    logp = lsm.gather(-1, r.completion_ids[..., None])[..., 0]
    ent = -(lsm.exp() * lsm).sum(-1)
    on = r.completion_mask != 0
    return torch.where(on, logp, 0.0), torch.where(on, ent, 0.0)


@pytest.mark.parametrize("build", [_qwen3_tied, _llama_untied, _granite_scaled],
                         ids=["qwen3-tied", "llama-untied", "granite-logits-scaling"])
@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_logprobs_entropy_and_gradients_equal_the_logits_path(build, lora):
    model = build().double().float()
    if lora:
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False))
    r = _rollout()
    head = model.get_output_embeddings()
    lm = fused_head.causal_lm(model)
    forward_before = head.forward
    logp, ent = completion_logprobs(model, r, temperature=TEMPERATURE, with_entropy=True)
    assert head.forward == forward_before and "forward" not in vars(head)  # the head is itself again
    assert "forward" not in vars(lm)  # and so is the model
    assert logp.shape == ent.shape == r.completion_ids.shape and logp.dtype == torch.float32
    ref_logp, ref_ent = _reference(model, r)
    assert_close_scaled(logp.double(), ref_logp, LOGP_RTOL)
    assert_close_scaled(ent.double(), ref_ent, LOGP_RTOL)
    assert (logp[2] == 0).all() and (ent[2] == 0).all()

    weights = torch.randn(r.completion_ids.shape, generator=torch.Generator().manual_seed(3))
    trained = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad((logp * weights).sum(), trained)
    ref_logp, _ = _reference(model, r)
    ref_grads = torch.autograd.grad((ref_logp * weights.double()).sum(), trained)
    assert len(grads) > 0 and any(g.abs().max() > 0 for g in grads)
    for g, ref in zip(grads, ref_grads):
        assert_close_scaled(g, ref.float(), GRAD_RTOL)


def test_no_grad_pass_and_the_head_is_restored_after_an_error():
    model = _qwen3_tied()
    r = _rollout()
    with torch.no_grad():
        logp, ent = completion_logprobs(model, r, temperature=1.0)
    assert not logp.requires_grad and (ent == 0).all()  # entropy not asked for
    with pytest.raises(ValueError, match="temperature must be a finite number > 0, got 0.0"):  # raised in the head
        completion_logprobs(model, r, temperature=0.0)
    assert "forward" not in vars(model.get_output_embeddings()) and "forward" not in vars(model)


def test_models_whose_logits_are_not_the_head_refuse_with_the_reason():
    gemma = Gemma2ForCausalLM(Gemma2Config(vocab_size=V, hidden_size=H, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                           final_logit_softcapping=30.0))
    assert "final_logit_softcapping=30.0" in unfusable_reason(gemma)
    with pytest.raises(ConfigError, match="fused LM head.*final_logit_softcapping"):
        check_fusable(gemma)
    assert unfusable_reason(_qwen3_tied()) is None
    granite = _granite_scaled()
    assert unfusable_reason(granite) is None and logit_multiplier(granite) == 1 / 2.5
    granite.config.logits_scaling = 0.0
    assert "logit scale inf" in unfusable_reason(granite)
    model = _llama_untied()
    model.lm_head = torch.nn.Sequential(model.lm_head)
    assert "Sequential" in unfusable_reason(model)


# ---------------------------------------------------------------------------------------------------------------
# ZeRO-3: a head weight still partitioned when the projection runs (no hook fetched it) is gathered for a pass
# without gradient and refused for a differentiable one (the real engine: tests/integrations/_trl_zero3_check.py)


class _Status:
    def __init__(self):
        self.name = "NOT_AVAILABLE"


def test_partitioned_head_is_gathered_without_grad_and_refused_with(monkeypatch):
    torch.manual_seed(0)
    N, Hs, Vs = 9, 8, 13
    weight = torch.nn.Parameter(torch.randn(Vs, Hs))
    bias = torch.nn.Parameter(torch.randn(Vs))
    hidden = torch.randn(N, Hs)
    ids = torch.randint(0, Vs, (N,))
    with torch.no_grad():
        want = linear_logprobs_and_entropy(hidden, weight, ids, bias=bias, temperature=0.7)

    full = {id(weight): weight.data, id(bias): bias.data}
    gathers = []

    @contextmanager
    def fake_gather(params):  # what deepspeed.zero.GatheredParameters does to a partitioned parameter
        gathers.append(len(params))
        for p in params:
            p.data, p.ds_status.name = full[id(p)], "AVAILABLE"
        yield
        for p in params:
            p.data, p.ds_status.name = torch.empty(0), "NOT_AVAILABLE"

    monkeypatch.setattr(fused_head, "_gathered", lambda params: fake_gather(params) if params else nullcontext())
    for p in (weight, bias):
        p.ds_status = _Status()
        p.data = torch.empty(0)
    with torch.no_grad():
        got = fused_head.project(hidden, weight, bias, ids, temperature=0.7, with_entropy=True)
    assert weight.numel() == 0 and gathers == [2]  # gathered once, partitioned again
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="partitioned .DeepSpeed ZeRO-3. and no hook gathered them"):
        fused_head.project(hidden.requires_grad_(), weight, bias, ids, temperature=0.7, with_entropy=True)
    assert gathers == [2]
