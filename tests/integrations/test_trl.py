"""semgrpo's fused head inside TRL's GRPOTrainer against TRL's own fused head (the independent reference).

The drop-in replaces only the ``fused_lm_head=True`` forward mode TRL gives its models, so every comparison runs
TRL's own ``_compute_loss`` twice on one batch, once with each head: one short training run with TRL's default loss
settings, direct calls for the options that change what the head sees or returns (loss, every parameter gradient,
the logged metrics), a model with a linear logit scale against semgrpo's trainer head, bf16 passes whose
first-iteration ratio and KL must be exact, fallbacks, the version check and bad input.

Tolerances (tests/_tolerance.py): both heads compute the same fp32 values by other paths (full logits in chunks vs a
fused head), so they differ by summation order only, over a forward and backward chain of 2 reductions per layer
plus the head's 2, each of at most max(tokens, hidden, vocabulary) terms (RTOL); gradients are judged against each
tensor's largest entry (their terms cancel).
"""

import dataclasses
import math
import os
import warnings
from collections import defaultdict

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
trl = pytest.importorskip("trl", reason="trl is not installed (optional integration)")
torch = pytest.importorskip("torch")

from _tolerance import assert_close_scaled, chain_rtol, linear_loss_rtol, stored_rtol
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GraniteConfig, GraniteForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import semgrpo.fused_head as fused_head
import semgrpo.integrations.trl as integ
from semgrpo.integrations.trl import (
    SemgrpoFallbackWarning,
    UnsupportedTRLError,
    unsupported_reason,
    use_semgrpo_loss,
)
from semgrpo.rollout import Rollout

WORDS = ["<pad>", "<eos>", "<unk>"] + [f"w{i}" for i in range(45)]
TEMPERATURE = 0.9
LAYERS, HIDDEN, MAX_TOKENS = 2, 32, 6 * 11  # the tiny models; the largest batch: 6 rows of 4 + 7 tokens
RTOL = chain_rtol(torch.float32, max(MAX_TOKENS, HIDDEN, len(WORDS)), depth=2 * LAYERS + 2)  # module docstring


def _tokenizer():
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


_SHAPE = dict(vocab_size=len(WORDS), hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=LAYERS, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, eos_token_id=1, bos_token_id=1)


def _model(**overrides):
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**_SHAPE, **overrides))


def _granite(logits_scaling=2.5):
    """A model whose forward divides its logits by a constant after the head (Granite's logits_scaling)."""
    torch.manual_seed(0)
    return GraniteForCausalLM(GraniteConfig(**_SHAPE, logits_scaling=logits_scaling))


def _reward(completions, **kwargs):
    # number of distinct words: varies within a group, so advantages are non-zero
    return [float(len(set(c.split()))) for c in completions]


def _data():
    return Dataset.from_dict({"prompt": [f"w{i} w{i + 1} w{i + 2}" for i in range(8)]})


def _config(out, **kw):
    base = dict(output_dir=str(out), per_device_train_batch_size=4, num_generations=4, max_completion_length=6,
                report_to=[], use_cpu=True, bf16=False, save_strategy="no", logging_steps=1, seed=0,
                temperature=TEMPERATURE)
    return trl.GRPOConfig(**{**base, **kw})


def _trainer(out, model=None, **kw):
    return trl.GRPOTrainer(model=_model() if model is None else model, reward_funcs=_reward, args=_config(out, **kw),
                           train_dataset=_data(), processing_class=_tokenizer())


def _saved_model(tmp_path):
    """A saved tiny model, so TRL can load a reference copy (beta > 0)."""
    path = tmp_path / "tiny"
    if not path.exists():
        _model().save_pretrained(path)
    return str(path)


def _count_op_calls(monkeypatch):
    calls = []
    real = fused_head.linear_logprobs_and_entropy
    monkeypatch.setattr(fused_head, "linear_logprobs_and_entropy", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def _patched_models(trainer):
    models_ = [fused_head.causal_lm(trainer.model)]
    if getattr(trainer, "ref_model", None) is not None:
        models_.append(fused_head.causal_lm(trainer.ref_model))
    return models_


class _TRLHead:
    """Within the block, the patched models run TRL's own fused head again (the reference of every comparison)."""

    def __init__(self, trainer):
        self.models = _patched_models(trainer)

    def __enter__(self):
        self.ours = [m.forward for m in self.models]
        for m, f in zip(self.models, self.ours):
            m.forward = getattr(f, integ._MARK)

    def __exit__(self, *exc):
        for m, f in zip(self.models, self.ours):
            m.forward = f


# ---------------------------------------------------------------------------------------------------------------
# training with TRL's default loss settings


def _train(tmp_path, patch, **kw):
    # loss_type and use_bias_correction_kl stay at TRL's defaults; beta=0.04 turns the (bias-corrected) KL on.
    # Two accumulation steps and two iterations over each generation batch: old log-probs differ from the
    # current ones on the second step, and dapo's num_items_in_batch gets TRL's rescaling.
    # SGD, not TRL's default AdamW: Adam divides each gradient by its own size, so a rounding-level difference of
    # a small entry becomes a sizeable step (README, the drop-in section); SGD's weights follow the gradients.
    args = _config(tmp_path / f"out_{patch}", **{**dict(beta=0.04, max_steps=2, learning_rate=5e-3, optim="sgd",
                                                        gradient_accumulation_steps=2, num_iterations=2,
                                                        epsilon_high=0.28), **kw})
    trainer = trl.GRPOTrainer(model=_saved_model(tmp_path), reward_funcs=_reward, args=args, train_dataset=_data(),
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
    assert (defaults["loss_type"], defaults["use_bias_correction_kl"], defaults["beta"]) == ("dapo", True, 0.0)
    calls = _count_op_calls(monkeypatch)
    _, base, (start, w_base) = _train(tmp_path, False)
    assert calls == []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer, ours, (_, w_ours) = _train(tmp_path, True)
    assert not [w for w in caught if issubclass(w.category, SemgrpoFallbackWarning)]
    # every log-prob pass went through the op: the 2 steps' 2 micro-batches each of the loss (one generation
    # batch of 8 completions serves both steps), and that batch's old and reference passes (2 chunks of 4 each)
    assert trainer._semgrpo_counts == {"semgrpo": len(calls), "fallback": 0}
    assert len(calls) == 2 * 2 + 2 + 2
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
# direct calls: TRL's _compute_loss with TRL's head and with ours, on the same batch


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
    with torch.no_grad(), _TRLHead(trainer):
        logp, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, torch.cat([prompt_ids, completion_ids], 1), torch.cat([prompt_mask, completion_mask], 1), K)

    def near(x, scale):
        return (x + scale * torch.randn(x.shape, generator=g)) * completion_mask

    adv = torch.tensor([1.2, -0.7, 0.4, -1.5, 0.9, -0.3])
    inputs = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
              "completion_mask": completion_mask,
              "advantages": adv[:, None] * (1 + 0.5 * torch.rand(B, K, generator=g)) if per_token_adv else adv,
              "ref_per_token_logps": near(logp, 0.3)}
    if old:
        inputs["old_per_token_logps"] = near(logp, 0.3)
    mask = completion_mask
    if tool:
        tool_mask = torch.ones(B, K, dtype=torch.long)
        tool_mask[0, 2:4] = 0
        tool_mask[3, 1] = 0
        inputs["tool_mask"] = tool_mask
        mask = mask * tool_mask
    inputs["num_items_in_batch"] = mask.sum()
    return inputs


_STATE = ("entropy_coef", "_last_world_entropy", "_entropy_window_stats")


def _run(trainer, inputs):
    trainer.model.zero_grad(set_to_none=True)
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    loss = trainer._compute_loss(trainer.model, inputs)
    if loss.requires_grad:
        loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    metrics = {m: dict(v) for m, v in trainer._metrics.items()}
    state = {k: getattr(trainer, k, None) for k in _STATE}
    return loss.detach(), grads, metrics, state


def _compare(trainer, inputs, *, rtol=RTOL):
    """TRL's _compute_loss with TRL's head and with ours: equal loss, gradients, metrics and controller state."""
    before = {k: getattr(trainer, k, None) for k in _STATE}
    with _TRLHead(trainer):
        loss_ref, grads_ref, metrics_ref, state_ref = _run(trainer, inputs)
    for k, v in before.items():
        setattr(trainer, k, v)
    n = dict(trainer._semgrpo_counts)
    loss, grads, metrics, state = _run(trainer, inputs)
    assert trainer._semgrpo_counts == {"semgrpo": n["semgrpo"] + 1, "fallback": n["fallback"]}
    assert loss_ref.abs() > 1e-4  # a non-trivial comparison
    assert loss.item() == pytest.approx(loss_ref.item(), rel=rtol)
    assert sorted(grads) == sorted(grads_ref)
    for name, g in grads_ref.items():  # each tensor against its largest entry: its terms cancel
        assert_close_scaled(grads[name], g, rtol, msg=name)
    for mode in ("train", "eval"):
        assert sorted(metrics[mode]) == sorted(metrics_ref[mode]), mode
        for key, values in metrics_ref[mode].items():
            for a, b in zip(values, metrics[mode][key], strict=True):
                assert (math.isnan(a) and math.isnan(b)) or b == pytest.approx(a, rel=rtol, abs=rtol), key
    for k in _STATE:
        a, b = state_ref[k], state[k]
        if isinstance(a, torch.Tensor):
            assert_close_scaled(b, a, rtol)
        else:
            assert b == pytest.approx(a, rel=rtol, abs=rtol), k
    return metrics


# The options that change what the head computes or how its outputs are used: the loss types that differentiate
# log-probs directly (cispo, vespo) or through ratios, sequence-level ratios, the entropy (masked, as a bonus: its
# gradient goes through the head), eval mode, tool masks and per-token advantages.
CASES = {
    "dapo-default-kl-accum": ({"beta": 0.04, "current_gradient_accumulation_steps": 2}, {"steps_per_generation": 4},
                              {}),
    "grpo-kl-no-bias-correction": ({"loss_type": "grpo", "beta": 0.04}, {"use_bias_correction_kl": False}, {}),
    "gspo-sequence": ({"loss_type": "grpo", "importance_sampling_level": "sequence", "beta": 0.04}, {}, {}),
    "cispo": ({"loss_type": "cispo", "epsilon_high": 1.1, "beta": 0.04}, {}, {}),
    "sapo": ({"loss_type": "sapo"}, {"sapo_temperature_pos": 0.8, "sapo_temperature_neg": 1.3}, {}),
    "luspo-sequence": ({"loss_type": "luspo", "importance_sampling_level": "sequence"}, {}, {}),
    "vespo": ({"loss_type": "vespo", "beta": 0.04}, {"vespo_k_pos": 1.5, "vespo_lambda_neg": 2.5}, {}),
    "entropy-mask": ({"top_entropy_quantile": 0.4, "beta": 0.04}, {}, {}),
    "entropy-bonus": ({"entropy_coef": 0.05, "_entropy_bonus_enabled": True, "top_entropy_quantile": 0.5}, {}, {}),
    "per-token-advantages": ({"loss_type": "grpo", "beta": 0.04}, {}, {"per_token_adv": True}),
    "no-old-no-tool": ({"beta": 0.04}, {}, {"old": False, "tool": False}),
    "eval-mode": ({"beta": 0.04}, {}, {}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_compute_loss_matches_trl(direct, monkeypatch, name):
    trainer_attrs, args_attrs, batch_opts = CASES[name]
    monkeypatch.setattr(direct, "current_gradient_accumulation_steps", 1, raising=False)
    for k, v in trainer_attrs.items():
        monkeypatch.setattr(direct, k, v, raising=False)
    for k, v in args_attrs.items():
        monkeypatch.setattr(direct.args, k, v)
    inputs = _batch(direct, **batch_opts)
    direct.model.train(name != "eval-mode")
    try:
        metrics = _compare(direct, inputs)
    finally:
        direct.model.train()
    logged = metrics["eval" if name == "eval-mode" else "train"]
    assert "entropy" in logged and ("kl" in logged) == (trainer_attrs.get("beta", 0.0) != 0.0)


def test_peft_model_matches_trl(tmp_path):
    peft = pytest.importorskip("peft")
    trainer = trl.GRPOTrainer(
        model=_model(), reward_funcs=_reward, args=_config(tmp_path, beta=0.0), processing_class=_tokenizer(),
        train_dataset=Dataset.from_dict({"prompt": ["w1 w2"] * 4}),
        peft_config=peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0),
    )
    use_semgrpo_loss(trainer)
    trainer.current_gradient_accumulation_steps = 1
    _compare(trainer, _batch(trainer))


def test_fp32_head_tied_bf16_and_config_logit_scale_match_trl(tmp_path):
    """cast_lm_head_to_fp32 on a bf16 model with tied embeddings, and a config logit scale that both heads fold
    into the temperature: TRL's head computes in fp32 here, and so does ours."""
    model = _model(tie_word_embeddings=True).to(torch.bfloat16)
    model.config.logit_scale = 0.7
    trainer = _trainer(tmp_path, model=model, cast_lm_head_to_fp32=True, beta=0.0)
    use_semgrpo_loss(trainer)
    assert trainer.model.lm_head.weight.dtype == torch.float32
    assert trainer.model.lm_head.weight is trainer.model.model.embed_tokens.weight
    trainer.current_gradient_accumulation_steps = 1
    trainer.beta, trainer.loss_type = 0.04, "grpo"
    # Both heads compute in fp32 and the bf16 body runs the same ops; but an fp32 difference in the gradient that
    # enters the body can flip a bf16 rounding at each of its 2 matmuls per layer.
    _compare(trainer, _batch(trainer), rtol=2 * LAYERS * stored_rtol(torch.bfloat16))


# ---------------------------------------------------------------------------------------------------------------
# one head fusion: the drop-in's log-probs are the trainer head's, also for a model that scales its logits


def test_linear_logit_scale_gives_the_trainer_heads_logprobs(tmp_path):
    model = _granite(logits_scaling=2.5)
    trainer = use_semgrpo_loss(_trainer(tmp_path, model=model, beta=0.0))
    assert unsupported_reason(trainer) is None
    inputs = _batch(trainer)
    P, K = inputs["prompt_ids"].shape[1], inputs["completion_ids"].shape[1]
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    with torch.no_grad():
        drop_in, ent, _ = trainer._get_per_token_logps_and_entropies(model, ids, mask, K, compute_entropy=True)
        rollout = Rollout(inputs["prompt_ids"], inputs["prompt_mask"], inputs["completion_ids"],
                          inputs["completion_mask"])
        trainer_head, trainer_ent = fused_head.completion_logprobs(model, rollout, temperature=TEMPERATURE,
                                                                   with_entropy=True)
        # the model's own logits (divided by logits_scaling inside its forward), in float64; TRL's forward mode
        # is bypassed by calling the class's forward
        logits = type(model).forward(model, input_ids=ids, attention_mask=mask).logits[:, P - 1:-1].double()
    on = inputs["completion_mask"] != 0
    lsm = torch.log_softmax(logits / TEMPERATURE, -1)
    want = lsm.gather(-1, inputs["completion_ids"][..., None])[..., 0]
    want_ent = -(lsm.exp() * lsm).sum(-1)
    # the same op on the same model: TRL numbers positions from 0 also under left padding and semgrpo from the
    # first real token, a constant shift that rotary embeddings cancel up to the body's rounding
    assert_close_scaled(drop_in[on], trainer_head[on], RTOL)
    assert_close_scaled(ent[on], trainer_ent[on], RTOL)
    # the model's own head in fp32 (then float64) against the fused one: each rounds its own H-term products and
    # V-term log-sum-exp
    assert_close_scaled(trainer_head[on].double(), want[on], 2 * linear_loss_rtol(HIDDEN, len(WORDS), MAX_TOKENS))
    assert_close_scaled(trainer_ent[on].double(), want_ent[on], 2 * linear_loss_rtol(HIDDEN, len(WORDS), MAX_TOKENS))


# ---------------------------------------------------------------------------------------------------------------
# bf16: old, reference and current log-probs all come from the same op


def test_bf16_first_iteration_ratio_is_exactly_one_and_kl_zero(tmp_path, monkeypatch):
    """TRL's default bf16, beta > 0 with a reference copy, two iterations (so TRL computes old log-probs): before
    the first optimizer step the policy is the reference and the sampler, so every ratio must be exactly 1 and
    every KL exactly 0."""
    args = _config(tmp_path / "out", bf16=True, beta=0.04, num_iterations=2, max_steps=1, learning_rate=1e-2)
    trainer = trl.GRPOTrainer(model=_saved_model(tmp_path), reward_funcs=_reward, args=args, train_dataset=_data(),
                              processing_class=_tokenizer())
    use_semgrpo_loss(trainer)
    seen = []
    real_logps, real_loss = trainer._get_per_token_logps_and_entropies, trainer._compute_loss

    def logps(*a, **k):
        out = real_logps(*a, **k)
        if torch.is_grad_enabled():
            seen[-1]["logp"] = out[0].detach()
        return out

    def compute_loss(model, inputs):
        seen.append({"inputs": inputs})
        return real_loss(model, inputs)

    monkeypatch.setattr(trainer, "_get_per_token_logps_and_entropies", logps)
    monkeypatch.setattr(trainer, "_compute_loss", compute_loss)
    trainer.train()
    first = seen[0]  # the first micro-batch: nothing has been updated yet
    inputs, logp = first["inputs"], first["logp"]
    on = inputs["completion_mask"] != 0
    assert on.sum() > 0 and logp.dtype == torch.float32
    ratio = torch.exp(logp - inputs["old_per_token_logps"])[on]
    kl_arg = (inputs["ref_per_token_logps"] - logp)[on]
    assert (ratio == 1).all(), (ratio.min().item(), ratio.max().item())
    assert (kl_arg == 0).all(), kl_arg.abs().max().item()
    assert trainer._semgrpo_counts["fallback"] == 0


# ---------------------------------------------------------------------------------------------------------------
# fallbacks, the version check and bad input


def test_fallbacks_run_trls_head_and_warn_once_per_reason(direct, monkeypatch):
    inputs = _batch(direct, tool=False)
    K = inputs["completion_ids"].shape[1]
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    with torch.no_grad(), _TRLHead(direct):
        want = direct._get_per_token_logps_and_entropies(direct.model, ids, mask, K)[0]
    assert unsupported_reason(direct, inputs) is None
    assert unsupported_reason(direct, {**inputs, "pixel_values": torch.zeros(6, 3, 4, 4)}) == "multimodal inputs"
    monkeypatch.setattr(direct, "_semgrpo_counts", {"semgrpo": 0, "fallback": 0})
    monkeypatch.setattr(direct._semgrpo, "counts", direct._semgrpo_counts)
    monkeypatch.setattr(direct._semgrpo, "warned", set())

    def logps_with_warnings(n):
        with warnings.catch_warnings(record=True) as rec, torch.no_grad():
            warnings.simplefilter("always")
            got = [direct._get_per_token_logps_and_entropies(direct.model, ids, mask, K)[0] for _ in range(n)]
        return got, [str(w.message) for w in rec if issubclass(w.category, SemgrpoFallbackWarning)]

    monkeypatch.setattr(direct, "aux_loss_enabled", True)
    got, warned = logps_with_warnings(2)
    assert len(warned) == 1 and "MoE" in warned[0]  # once per reason
    for g in got:  # TRL's own head ran: its values exactly
        assert torch.equal(g, want)
    monkeypatch.setattr(direct, "aux_loss_enabled", False)
    monkeypatch.setattr(direct.model.config, "logit_scale", 0.0, raising=False)
    got, warned = logps_with_warnings(1)
    assert len(warned) == 1 and "logit scale 0.0" in warned[0]
    monkeypatch.delattr(direct.model.config, "logit_scale")
    assert direct._semgrpo_counts == {"semgrpo": 0, "fallback": 3}
    got, warned = logps_with_warnings(1)
    assert warned == [] and direct._semgrpo_counts == {"semgrpo": 1, "fallback": 3}


def test_softcapped_logits_are_refused_by_name(direct, monkeypatch):
    monkeypatch.setattr(direct.model.config, "final_logit_softcapping", 30.0, raising=False)
    assert "final_logit_softcapping=30.0" in unsupported_reason(direct)


def test_backend_reaches_the_op(direct, monkeypatch):
    seen = []
    real = fused_head.linear_logprobs_and_entropy

    def op(*a, backend=None, **k):
        seen.append(backend)
        return real(*a, **k)

    monkeypatch.setattr(fused_head, "linear_logprobs_and_entropy", op)
    monkeypatch.setattr(direct._semgrpo, "backend", None)
    use_semgrpo_loss(direct, backend="torch")
    monkeypatch.setattr(direct, "current_gradient_accumulation_steps", 1, raising=False)
    direct._compute_loss(direct.model, _batch(direct))
    assert seen == ["torch"]


@pytest.mark.parametrize("version", ["1.17.0", "1.15.2", "2.0.0.dev0"])
def test_other_trl_versions_are_one_clear_error(direct, monkeypatch, version):
    monkeypatch.setattr(trl, "__version__", version)
    with pytest.raises(UnsupportedTRLError) as info:
        use_semgrpo_loss(direct)
    message = str(info.value)
    assert "\n" not in message and f"found trl {version}" in message and "trl>=1.16.0,<1.17.0" in message


def test_rejects_non_trainer():
    with pytest.raises(TypeError, match="GRPOTrainer, got object"):
        use_semgrpo_loss(object())


def test_rejects_unknown_backend(direct):
    with pytest.raises(ValueError, match="backend"):
        use_semgrpo_loss(direct, backend="cuda")
