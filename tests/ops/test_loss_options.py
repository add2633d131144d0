"""The loss options are written once (semgrpo/ops/loss_options.py): a frozen LossOptions, or its fields as keywords of
grpo_loss / linear_grpo_loss / policy_loss_from_logps, with the same results; the trainer builds one from the config
keys of the same names. Torch path only (the Triton paths take the same options object: tests/ops/*)."""
import dataclasses
import inspect

import pytest
import torch

from semgrpo.batching import loss_options
from semgrpo.config import load_config
from semgrpo.ops import LossOptions, grpo_loss, linear_grpo_loss, policy_loss_from_logps

FIELDS = [f.name for f in dataclasses.fields(LossOptions)]
# every field away from its default
CHANGED = dict(temperature=0.7, eps_low=0.15, eps_high=0.3, beta=0.05, loss_type="sapo",
               importance_sampling_level="sequence", delta=1.4, use_bias_correction_kl=True, max_completion_length=9,
               sapo_temperature_pos=0.8, sapo_temperature_neg=1.2, vespo_k_pos=1.5, vespo_lambda_pos=2.5,
               vespo_k_neg=2.5, vespo_lambda_neg=1.5)


def _batch():
    g = torch.Generator().manual_seed(0)
    B, T, H, V = 3, 5, 8, 17
    hidden, weight = torch.randn(B, T, H, generator=g), torch.randn(V, H, generator=g)
    ids = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T)
    mask[2, 3:] = 0
    adv = torch.tensor([1.0, -0.5, 0.3])
    logp = torch.log_softmax(hidden @ weight.T, -1).gather(-1, ids[..., None])[..., 0]
    return hidden, weight, ids, mask, adv, logp + 0.3 * torch.randn(B, T, generator=g), logp + 0.2


def test_every_option_is_a_keyword_of_every_loss_function_with_its_default():
    assert set(CHANGED) == set(FIELDS)
    defaults = {f.name: f.default for f in dataclasses.fields(LossOptions)}
    for fn in (grpo_loss, linear_grpo_loss, policy_loss_from_logps):
        params = inspect.signature(fn).parameters
        assert "options" in params
        for name in FIELDS:
            assert params[name].kind is inspect.Parameter.KEYWORD_ONLY and params[name].default == defaults[name], \
                (fn.__name__, name)


@pytest.mark.parametrize("loss_type", ["sapo", "vespo", "luspo", "dr_grpo"])
def test_options_object_and_keywords_give_the_same_loss_and_gradient(loss_type):
    hidden, weight, ids, mask, adv, old, ref = _batch()
    changed = dict(CHANGED, loss_type=loss_type)
    results = []
    for how in ("keywords", "options", "options+keywords"):
        h = hidden.clone().requires_grad_()
        if how == "keywords":
            kw = changed
        elif how == "options":
            kw = {"options": LossOptions(**changed)}
        else:  # a keyword wins over the object's field
            kw = {"options": LossOptions(**dict(changed, beta=0.9)), "beta": changed["beta"]}
        loss, _ = linear_grpo_loss(h, weight, ids, mask, adv, old, ref, backend="torch", **kw)
        loss.backward()
        results.append((loss.detach(), h.grad))
    for loss, grad in results[1:]:
        assert torch.equal(loss, results[0][0]) and torch.equal(grad, results[0][1])


def test_grpo_loss_and_policy_loss_take_the_options_object_too():
    hidden, weight, ids, mask, adv, old, ref = _batch()
    opts = LossOptions(**dict(CHANGED, loss_type="grpo", temperature=1.0))
    logits = hidden @ weight.T
    a, _ = grpo_loss(logits, ids, mask, adv, old, ref, options=opts, backend="torch")
    logp = torch.log_softmax(logits, -1).gather(-1, ids[..., None])[..., 0]
    b, _ = policy_loss_from_logps(logp, mask, adv, old, ref, options=opts)
    torch.testing.assert_close(a, b)  # the same fp32 math on the same log-probs


def test_bad_options_are_refused_when_built_and_the_object_is_frozen():
    with pytest.raises(ValueError, match="eps_low must be < 1"):
        LossOptions(eps_low=1.0)
    with pytest.raises(ValueError, match="loss_type must be one of"):
        LossOptions(loss_type="ppo")
    with pytest.raises(TypeError, match="beta must be a finite number >= 0, got '0.1'"):
        LossOptions(beta="0.1")
    with pytest.raises(TypeError, match="use_bias_correction_kl must be True or False"):
        LossOptions(use_bias_correction_kl="yes")
    with pytest.raises(dataclasses.FrozenInstanceError):
        LossOptions().beta = 0.1
    assert LossOptions(beta=1) == LossOptions(beta=1.0) and hash(LossOptions(beta=1)) == hash(LossOptions(beta=1.0))


def test_unknown_keyword_and_wrong_options_type_are_type_errors():
    hidden, weight, ids, mask, adv, old, ref = _batch()
    with pytest.raises(TypeError, match="linear_grpo_loss\\(\\) got an unexpected keyword argument 'betta'"):
        linear_grpo_loss(hidden, weight, ids, mask, adv, betta=0.1)
    with pytest.raises(TypeError, match="options must be a LossOptions, got dict"):
        grpo_loss(hidden @ weight.T, ids, mask, adv, options={"beta": 0.1})


def test_the_trainer_builds_its_options_from_the_config_keys_of_the_same_names():
    overrides = [f"grpo.{k}={v}" for k, v in CHANGED.items() if k != "max_completion_length"]
    cfg = load_config([], [*overrides, "grpo.max_completion_length=9"])
    assert loss_options(cfg.grpo) == LossOptions(**CHANGED)


def test_the_config_defaults_are_the_ops_defaults_but_where_the_readme_says_why_not():
    """Both follow TRL 1.16's GRPOConfig; the config differs in the sampling temperature (the paper's 0.8), the
    completion length (a config sets it; the op defaults to the batch's T) and the bias-corrected KL (TRL's default
    in the trainer; the ops keep their behaviour from before the option existed)."""
    grpo = load_config([], []).grpo
    differ = {name for name in FIELDS if getattr(grpo, name) != getattr(LossOptions(), name)}
    assert differ == {"temperature", "max_completion_length", "use_bias_correction_kl"}
