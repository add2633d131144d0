"""semgrpo's drop-in loss for TRL's GRPOTrainer against TRL's own ``_compute_loss`` (the independent reference).

One short training run with TRL's default loss settings, with and without the drop-in; direct calls of both
``_compute_loss`` versions on hand-built batches for every option (loss, every parameter gradient, the logged
metrics); the ZeRO-3 gather path with a simulated partitioned head; fallbacks and bad input.
"""

import dataclasses
import math
import os
import warnings
from collections import defaultdict
from contextlib import contextmanager, nullcontext

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
trl = pytest.importorskip("trl", reason="trl is not installed (optional integration)")
torch = pytest.importorskip("torch")

from _tolerance import assert_close_scaled, chain_rtol, stored_rtol
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import semgrpo.integrations.trl as integ
from semgrpo.integrations.trl import SemgrpoFallbackWarning, unsupported_reason, use_semgrpo_loss
from semgrpo.ops import linear_logprobs_and_entropy

WORDS = ["<pad>", "<eos>", "<unk>"] + [f"w{i}" for i in range(45)]
TEMPERATURE = 0.9
LAYERS, HIDDEN, MAX_TOKENS = 2, 32, 6 * 11  # the tiny Llama; the largest batch: 6 rows of 4 + 7 tokens
# TRL and the drop-in compute the same fp32 values by other paths (full logits vs a fused head): they differ by
# summation order only, over a forward and backward chain of 2 reductions per layer plus the head's 2, each of
# at most max(tokens, hidden, vocabulary) terms.
RTOL = chain_rtol(torch.float32, max(MAX_TOKENS, HIDDEN, len(WORDS)), depth=2 * LAYERS + 2)


def _tokenizer():
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def _model(**overrides):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(WORDS), hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=LAYERS,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      pad_token_id=0, eos_token_id=1, bos_token_id=1, **overrides)
    return LlamaForCausalLM(cfg)


def _reward(completions, **kwargs):
    # number of distinct words: varies within a group, so advantages are non-zero
    return [float(len(set(c.split()))) for c in completions]


def _config(out, **kw):
    base = dict(output_dir=str(out), per_device_train_batch_size=4, num_generations=4, max_completion_length=6,
                report_to=[], use_cpu=True, bf16=False, save_strategy="no", logging_steps=1, seed=0,
                temperature=TEMPERATURE)
    return trl.GRPOConfig(**{**base, **kw})


def _trainer(out, model=None, **kw):
    data = Dataset.from_dict({"prompt": [f"w{i} w{i + 1} w{i + 2}" for i in range(8)]})
    return trl.GRPOTrainer(model=_model() if model is None else model, reward_funcs=_reward, args=_config(out, **kw),
                           train_dataset=data, processing_class=_tokenizer())


def _count_op_calls(monkeypatch):
    calls = []
    real = integ.linear_logprobs_and_entropy
    monkeypatch.setattr(integ, "linear_logprobs_and_entropy", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


# ---------------------------------------------------------------------------------------------------------------
# training with TRL's default loss settings


def _train(tmp_path, patch):
    path = tmp_path / "tiny"
    if not path.exists():  # a saved model, so TRL can load the reference copy (beta > 0)
        _model().save_pretrained(path)
    # loss_type and use_bias_correction_kl stay at TRL's defaults; beta=0.04 turns the (bias-corrected) KL on.
    # Two accumulation steps and two iterations over each generation batch: old log-probs differ from the
    # current ones on the second step, and dapo's num_items_in_batch gets TRL's rescaling.
    # SGD, not TRL's default AdamW: Adam divides each gradient by its own size, so an entry that is zero up to
    # rounding (1e-9) moves by a sizeable fraction of the learning rate in that rounding's direction, and two runs
    # that only sum in another order end with weights ~1e-2 apart. SGD's weights follow the gradients smoothly.
    args = _config(tmp_path / f"out_{patch}", beta=0.04, max_steps=2, learning_rate=5e-3, optim="sgd",
                   gradient_accumulation_steps=2, num_iterations=2, epsilon_high=0.28)
    data = Dataset.from_dict({"prompt": [f"w{i} w{i + 1} w{i + 2}" for i in range(8)]})
    trainer = trl.GRPOTrainer(model=str(path), reward_funcs=_reward, args=args, train_dataset=data,
                              processing_class=_tokenizer())
    if patch:
        assert unsupported_reason(trainer) is None
        use_semgrpo_loss(trainer)
    start = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    hist = [h for h in trainer.state.log_history if "loss" in h]
    return trainer, hist, (start, [p.detach().clone() for p in trainer.model.parameters()])


def test_default_config_training_matches_trl(tmp_path, monkeypatch):
    defaults = {f.name: f.default for f in dataclasses.fields(trl.GRPOConfig)}
    assert (defaults["loss_type"], defaults["use_bias_correction_kl"]) == ("dapo", True)  # TRL 1.16's defaults
    calls = _count_op_calls(monkeypatch)
    _, base, (start, w_base) = _train(tmp_path, False)
    assert calls == []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer, ours, (_, w_ours) = _train(tmp_path, True)
    assert not [w for w in caught if issubclass(w.category, SemgrpoFallbackWarning)]
    assert trainer._semgrpo_counts == {"semgrpo": 4, "fallback": 0}  # 2 steps x 2 micro-batches, no fallback
    assert len(calls) == 4
    assert len(base) == len(ours) == 2
    assert any(h["kl"] > 0 for h in base) and any(h["grad_norm"] > 0 for h in base)
    # Two optimizer steps in a row: the second one's inputs carry the first one's rounding.
    rtol = 2 * RTOL
    for a, b in zip(base, ours):
        for key in ("loss", "grad_norm", "entropy", "clip_ratio/region_mean", "clip_ratio/low_min",
                    "clip_ratio/high_max"):
            assert b[key] == pytest.approx(a[key], rel=rtol, abs=rtol), key
        # KL is a sum of (ref - logp)^2-sized terms of a policy one step from its reference: near 0, so its
        # rounding is relative to the log-probs it was computed from (|logp| <= log V).
        assert b["kl"] == pytest.approx(a["kl"], abs=rtol * math.log(len(WORDS))), "kl"
    assert any((w - w0).abs().max() > 0 for w, w0 in zip(w_base, start))
    for w0, a, b in zip(start, w_base, w_ours):  # each tensor, not one norm over all of them
        # the update's rounding, plus the rounding of each of the 2 updates into the fp32 weight (per run)
        bound = rtol * (a - w0).abs().max() + 2 * 2 * stored_rtol(torch.float32) * a.abs()
        assert ((b - a).abs() <= bound).all(), f"{(b - a).abs().max():.3g} > {bound.max():.3g}"


# ---------------------------------------------------------------------------------------------------------------
# direct calls: TRL's _compute_loss vs ours on the same batch


@pytest.fixture(scope="module")
def direct(tmp_path_factory):
    trainer = _trainer(tmp_path_factory.mktemp("direct"), epsilon_high=0.28)
    return use_semgrpo_loss(trainer)


def _batch(trainer, *, seed=0, tool=True, old=True, per_token_adv=False):
    """A left-padded prompt / right-padded completion batch with old, reference and sampling log-probs near the
    model's current ones (zero on padding, as TRL's pipeline leaves them)."""
    g = torch.Generator().manual_seed(seed)
    B, P, K, V = 6, 4, 7, len(WORDS)
    prompt_ids = torch.randint(3, V, (B, P), generator=g)
    prompt_mask = torch.ones(B, P, dtype=torch.long)
    prompt_mask[0, :2] = 0
    prompt_mask[4, :1] = 0
    prompt_ids[prompt_mask == 0] = 0
    lengths = torch.tensor([7, 5, 3, 7, 1, 6])
    completion_mask = (torch.arange(K)[None] < lengths[:, None]).long()
    completion_ids = torch.randint(3, V, (B, K), generator=g) * completion_mask
    with torch.no_grad():
        logits = trainer.model(input_ids=torch.cat([prompt_ids, completion_ids], 1),
                               attention_mask=torch.cat([prompt_mask, completion_mask], 1)).logits
        logp = torch.log_softmax(logits[:, P - 1 : -1].float() / trainer.temperature, -1)
        logp = logp.gather(-1, completion_ids[..., None])[..., 0]

    def near(x, scale):
        return (x + scale * torch.randn(x.shape, generator=g)) * completion_mask

    adv = torch.tensor([1.2, -0.7, 0.4, -1.5, 0.9, -0.3])
    inputs = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
              "completion_mask": completion_mask,
              "advantages": adv[:, None] * (1 + 0.5 * torch.rand(B, K, generator=g)) if per_token_adv else adv,
              "ref_per_token_logps": near(logp, 0.3)}
    if old:
        inputs["old_per_token_logps"] = near(logp, 0.3)
        inputs["sampling_per_token_logps"] = near(inputs["old_per_token_logps"], 0.2)
    mask = completion_mask
    if tool:
        tool_mask = torch.ones(B, K, dtype=torch.long)
        tool_mask[0, 2:4] = 0
        tool_mask[3, 1] = 0
        inputs["tool_mask"] = tool_mask
        mask = mask * tool_mask
    inputs["num_items_in_batch"] = mask.sum()
    return inputs


def _is_ratio(inputs, per_sequence):
    g = torch.Generator().manual_seed(7)
    B, K = inputs["completion_ids"].shape
    if per_sequence:
        return 0.5 + 1.5 * torch.rand(B, 1, generator=g)
    mask = inputs["completion_mask"] * inputs.get("tool_mask", 1)
    return torch.where(mask.bool(), 0.5 + 1.5 * torch.rand(B, K, generator=g), 1.0)  # 1 where TRL leaves it 1


_STATE = ("entropy_coef", "_last_world_entropy", "_entropy_window_stats")


def _run(trainer, compute, inputs):
    trainer.model.zero_grad(set_to_none=True)
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    loss = compute(trainer.model, inputs)
    if loss.requires_grad:
        loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    metrics = {m: dict(v) for m, v in trainer._metrics.items()}
    state = {k: getattr(trainer, k, None) for k in _STATE}
    return loss.detach(), grads, metrics, state


def _assert_same_metrics(ref, ours):
    for mode in ("train", "eval"):
        assert sorted(ours[mode]) == sorted(ref[mode]), mode
        for key, values in ref[mode].items():
            assert len(ours[mode][key]) == len(values), key
            for a, b in zip(values, ours[mode][key]):
                assert (math.isnan(a) and math.isnan(b)) or b == pytest.approx(a, rel=RTOL, abs=RTOL), key


def _compare(trainer, inputs, *, rtol=RTOL):
    """Run TRL's and our _compute_loss on `inputs`; assert equal loss, gradients, metrics and controller state."""
    before = {k: getattr(trainer, k, None) for k in _STATE}
    loss_ref, grads_ref, metrics_ref, state_ref = _run(trainer, trainer._semgrpo_original_compute_loss, inputs)
    for k, v in before.items():
        setattr(trainer, k, v)
    n = dict(trainer._semgrpo_counts)
    loss, grads, metrics, state = _run(trainer, trainer._compute_loss, inputs)
    assert trainer._semgrpo_counts == {"semgrpo": n["semgrpo"] + 1, "fallback": n["fallback"]}
    assert loss_ref.abs() > 1e-4  # a non-trivial comparison
    assert loss.item() == pytest.approx(loss_ref.item(), rel=rtol)
    assert sorted(grads) == sorted(grads_ref)
    for name, g in grads_ref.items():
        assert_close_scaled(grads[name], g, rtol, msg=name)
    _assert_same_metrics(metrics_ref, metrics)
    for k in _STATE:
        a, b = state_ref[k], state[k]
        if isinstance(a, torch.Tensor):
            assert_close_scaled(b, a, RTOL)
        else:
            assert b == pytest.approx(a, rel=RTOL, abs=RTOL), k
    return metrics


def _case(trainer=None, args=None, batch=None, is_ratio=None, eval_mode=False):
    """One option set: trainer attributes, config attributes, _batch options, an importance_sampling_ratio
    ("token" [B, T] or "sequence" [B, 1]) in the batch, eval mode."""
    return {"trainer": trainer or {}, "args": args or {}, "batch": batch or {}, "is_ratio": is_ratio,
            "eval": eval_mode}


VLLM_IS = {"use_vllm": True, "vllm_importance_sampling_correction": True}
CASES = {
    "dapo-default-kl-accum": _case({"beta": 0.04, "current_gradient_accumulation_steps": 2},
                                   {"steps_per_generation": 4}),
    "grpo-kl-no-bias-correction": _case({"loss_type": "grpo", "beta": 0.04}, {"use_bias_correction_kl": False}),
    "bnpo": _case({"loss_type": "bnpo"}),
    "dr_grpo": _case({"loss_type": "dr_grpo", "beta": 0.04}),
    "gspo-sequence": _case({"loss_type": "grpo", "importance_sampling_level": "sequence", "beta": 0.04}),
    "cispo": _case({"loss_type": "cispo", "epsilon_high": 1.1, "beta": 0.04}),
    "sapo": _case({"loss_type": "sapo"}, {"sapo_temperature_pos": 0.8, "sapo_temperature_neg": 1.3}),
    "luspo-sequence": _case({"loss_type": "luspo", "importance_sampling_level": "sequence"}),
    "vespo-is-ratio": _case({"loss_type": "vespo", "beta": 0.04}, {"vespo_k_pos": 1.5, "vespo_lambda_neg": 2.5},
                            is_ratio="token"),
    "delta": _case({"loss_type": "grpo"}, {"delta": 1.15}),
    "entropy-mask": _case({"top_entropy_quantile": 0.4, "beta": 0.04}),
    "off-policy-mask": _case({"off_policy_mask_threshold": 0.01, "loss_type": "bnpo"}),
    "vespo-masks": _case({"loss_type": "vespo", "top_entropy_quantile": 0.5, "off_policy_mask_threshold": 0.01},
                         is_ratio="token"),
    "vllm-is-token": _case({**VLLM_IS, "top_entropy_quantile": 0.6}, is_ratio="token"),
    "vllm-is-sequence-gspo": _case({**VLLM_IS, "loss_type": "grpo", "importance_sampling_level": "sequence",
                                    "beta": 0.04}, is_ratio="sequence"),
    "entropy-bonus": _case({"entropy_coef": 0.05, "_entropy_bonus_enabled": True, "top_entropy_quantile": 0.5}),
    "adaptive-entropy": _case({"entropy_coef": 0.05, "use_adaptive_entropy": True, "_entropy_bonus_enabled": True,
                               "_last_world_entropy": 0.0, "_entropy_window_stats": None}, {"entropy_target": 5.0}),
    "per-token-advantages": _case({"loss_type": "grpo", "beta": 0.04}, batch={"per_token_adv": True}),
    "no-old-no-tool": _case({"beta": 0.04}, batch={"old": False, "tool": False}),
    "eval-mode": _case({"beta": 0.04}, eval_mode=True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_compute_loss_matches_trl(direct, monkeypatch, name):
    case = CASES[name]
    monkeypatch.setattr(direct, "current_gradient_accumulation_steps", 1, raising=False)
    for k, v in case["trainer"].items():
        monkeypatch.setattr(direct, k, v, raising=False)
    for k, v in case["args"].items():
        monkeypatch.setattr(direct.args, k, v)
    inputs = _batch(direct, **case["batch"])
    if case["is_ratio"] is not None:
        inputs["importance_sampling_ratio"] = _is_ratio(inputs, case["is_ratio"] == "sequence")
    direct.model.train(not case["eval"])
    try:
        metrics = _compare(direct, inputs)
    finally:
        direct.model.train()
    logged = metrics["eval" if case["eval"] else "train"]
    assert "entropy" in logged and ("kl" in logged) == (case["trainer"].get("beta", 0.0) != 0.0)
    if name in ("delta", "cispo", "gspo-sequence"):  # the batch really exercises the clipping
        key = "cispo_clip_ratio" if name == "cispo" else "clip_ratio/region_mean"
        assert logged[key][0] > 0


def test_peft_model_matches_trl(tmp_path):
    peft = pytest.importorskip("peft")
    trainer = trl.GRPOTrainer(
        model=_model(), reward_funcs=_reward, args=_config(tmp_path, beta=0.0), processing_class=_tokenizer(),
        train_dataset=Dataset.from_dict({"prompt": ["w1 w2"] * 4}),
        peft_config=peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0),
    )
    use_semgrpo_loss(trainer)
    trainer.current_gradient_accumulation_steps = 1
    inputs = _batch(trainer)
    _compare(trainer, inputs)


def test_fp32_head_tied_bf16_and_logit_scale_match_trl(tmp_path):
    """cast_lm_head_to_fp32 on a bf16 model with tied embeddings, and a config logit scale (folded into the
    temperature): TRL's head computes in fp32 here, and so does ours."""
    model = _model(tie_word_embeddings=True).to(torch.bfloat16)
    model.config.logit_scale = 0.7
    trainer = _trainer(tmp_path, model=model, cast_lm_head_to_fp32=True, beta=0.0)
    use_semgrpo_loss(trainer)
    assert trainer.model.lm_head.weight.dtype == torch.float32
    assert trainer.model.lm_head.weight is trainer.model.model.embed_tokens.weight
    trainer.current_gradient_accumulation_steps = 1
    trainer.beta = 0.04
    trainer.loss_type = "grpo"
    inputs = _batch(trainer)
    # Both heads compute in fp32 and the bf16 body runs the same ops; but an fp32 difference in the gradient that
    # enters the body can flip a bf16 rounding at each of its 2 matmuls per layer.
    _compare(trainer, inputs, rtol=2 * LAYERS * stored_rtol(torch.bfloat16))


# ---------------------------------------------------------------------------------------------------------------
# ZeRO-3: a partitioned head weight is gathered for the projection and again for its backward


class _Status:
    def __init__(self):
        self.name = "NOT_AVAILABLE"


def test_partitioned_head_is_gathered_in_forward_and_backward(monkeypatch):
    torch.manual_seed(0)
    N, H, V = 9, 8, 13
    weight = torch.nn.Parameter(torch.randn(V, H))
    bias = torch.nn.Parameter(torch.randn(V))
    hidden = torch.randn(N, H, requires_grad=True)
    ids = torch.randint(0, V, (N,))
    c_lp, c_ent = torch.randn(N), torch.randn(N)

    logp, ent = linear_logprobs_and_entropy(hidden, weight, ids, bias=bias, temperature=0.7)
    expected = torch.autograd.grad((c_lp * logp + c_ent * ent).sum(), [hidden, weight, bias])

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

    monkeypatch.setattr(integ, "_gathered", lambda params: fake_gather(params) if params else nullcontext())
    for p in (weight, bias):
        p.ds_status = _Status()
        p.data = torch.empty(0)
    logp2, ent2 = integ._project(hidden, weight, bias, ids, 0.7, None)
    assert weight.numel() == 0  # partitioned again after the forward
    got = torch.autograd.grad((c_lp * logp2 + c_ent * ent2).sum(), [hidden, weight, bias])
    assert gathers == [2, 2]  # forward, then backward
    # the same op on the same values, only gathered around it: bitwise equal
    torch.testing.assert_close(logp2, logp.detach(), rtol=0, atol=0)
    torch.testing.assert_close(ent2, ent.detach(), rtol=0, atol=0)
    for a, b in zip(expected, got):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------------
# fallbacks and bad input


def test_fallbacks_warn_once_per_reason(direct, monkeypatch):
    sentinel = torch.tensor(123.0)
    monkeypatch.setattr(direct, "_semgrpo_original_compute_loss", lambda model, inputs: sentinel)
    monkeypatch.setattr(direct, "_semgrpo_warned", set())
    monkeypatch.setattr(direct, "_semgrpo_counts", {"semgrpo": 0, "fallback": 0})
    inputs = _batch(direct)
    assert unsupported_reason(direct, inputs) is None
    mm = {**inputs, "pixel_values": torch.zeros(6, 3, 4, 4)}
    assert unsupported_reason(direct, mm) == "multimodal inputs"
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        results = [direct._compute_loss(direct.model, mm) for _ in range(2)]
    assert all(r is sentinel for r in results)
    fallback = [str(w.message) for w in rec if issubclass(w.category, SemgrpoFallbackWarning)]
    assert len(fallback) == 1 and "multimodal" in fallback[0]  # once per reason

    monkeypatch.setattr(direct, "aux_loss_enabled", True)
    with pytest.warns(SemgrpoFallbackWarning, match="MoE"):
        assert direct._compute_loss(direct.model, inputs) is sentinel
    monkeypatch.setattr(direct, "aux_loss_enabled", False)

    monkeypatch.setattr(direct.model.config, "final_logit_softcapping", 30.0, raising=False)
    with pytest.warns(SemgrpoFallbackWarning, match="final_logit_softcapping"):
        assert direct._compute_loss(direct.model, inputs) is sentinel
    monkeypatch.delattr(direct.model.config, "final_logit_softcapping")
    monkeypatch.setattr(direct.model.config, "logit_scale", 0.0, raising=False)
    with pytest.warns(SemgrpoFallbackWarning, match="logit scale"):
        assert direct._compute_loss(direct.model, inputs) is sentinel
    assert direct._semgrpo_counts == {"semgrpo": 0, "fallback": 5}


def test_backend_reaches_the_op(direct, monkeypatch):
    seen = []
    real = integ.linear_logprobs_and_entropy

    def op(hidden, weight, ids, *, bias=None, temperature=1.0, with_entropy=True, backend=None):
        seen.append(backend)
        return real(hidden, weight, ids, bias=bias, temperature=temperature, with_entropy=with_entropy)

    monkeypatch.setattr(integ, "linear_logprobs_and_entropy", op)
    monkeypatch.setattr(direct, "current_gradient_accumulation_steps", 1, raising=False)
    monkeypatch.setattr(direct, "_semgrpo_backend", None)
    use_semgrpo_loss(direct, backend="torch")
    direct._compute_loss(direct.model, _batch(direct))
    assert seen == ["torch"]


def test_rejects_non_trainer():
    with pytest.raises(TypeError, match="GRPOTrainer, got object"):
        use_semgrpo_loss(object())


def test_rejects_unknown_backend(direct):
    with pytest.raises(ValueError, match="backend"):
        use_semgrpo_loss(direct, backend="cuda")
