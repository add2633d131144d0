"""TRL GRPOTrainer trains a tiny offline model to the same losses with and without semgrpo's loss."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
trl = pytest.importorskip("trl", reason="trl is not installed (optional integration)")
torch = pytest.importorskip("torch")

from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from semgrpo.integrations.trl import unsupported_reason, use_semgrpo_loss

WORDS = ["<pad>", "<eos>", "<unk>"] + [f"w{i}" for i in range(45)]


def _tokenizer():
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def _model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      pad_token_id=0, eos_token_id=1, bos_token_id=1)
    return LlamaForCausalLM(cfg)


def _reward(completions, **kwargs):
    # number of distinct words: varies within a group, so advantages are non-zero
    return [float(len(set(c.split()))) for c in completions]


def _train(tmp_path, patch, loss_type, beta):
    data = Dataset.from_dict({"prompt": [f"w{i} w{i + 1} w{i + 2}" for i in range(8)]})
    args = trl.GRPOConfig(
        output_dir=str(tmp_path / f"out_{patch}"), per_device_train_batch_size=4, num_generations=4,
        max_completion_length=6, max_steps=3, learning_rate=5e-3, logging_steps=1, report_to=[], use_cpu=True,
        seed=0, beta=beta, loss_type=loss_type, temperature=0.9, epsilon=0.2, epsilon_high=0.28,
        num_iterations=2, gradient_accumulation_steps=1, save_strategy="no", bf16=False,
        use_bias_correction_kl=False,
    )
    path = tmp_path / "tiny"
    if not path.exists():  # a saved model, so TRL can load the reference copy when beta > 0
        _model().save_pretrained(path)
    trainer = trl.GRPOTrainer(model=str(path), reward_funcs=_reward, args=args, train_dataset=data,
                              processing_class=_tokenizer())
    if patch:
        assert unsupported_reason(trainer) is None
        use_semgrpo_loss(trainer, backend="torch")
    trainer.train()
    hist = [h for h in trainer.state.log_history if "loss" in h]
    return hist, [p.detach().clone() for p in trainer.model.parameters()]


@pytest.mark.parametrize("loss_type, beta", [("grpo", 0.0), ("dapo", 0.05)])
def test_same_losses_with_and_without_semgrpo(tmp_path, monkeypatch, loss_type, beta):
    import semgrpo.integrations.trl as integ

    calls = []
    real = integ.grpo_loss
    monkeypatch.setattr(integ, "grpo_loss", lambda *a, **k: calls.append(k["loss_type"]) or real(*a, **k))
    base, w_base = _train(tmp_path, False, loss_type, beta)
    assert calls == []
    ours, w_ours = _train(tmp_path, True, loss_type, beta)
    assert calls and set(calls) == {loss_type}  # the patched path really ran
    assert len(base) == len(ours) == 3
    if beta:
        assert all("kl" in h for h in ours)
    for a, b in zip(base, ours):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6)
        for key in ("clip_ratio/region_mean", "kl"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    assert any(abs(h["loss"]) > 0 for h in base) or any((x != y).any() for x, y in zip(w_base, _model().parameters()))
    for x, y in zip(w_base, w_ours):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)


def test_unsupported_config_falls_back(tmp_path):
    args = trl.GRPOConfig(output_dir=str(tmp_path / "o"), per_device_train_batch_size=4, num_generations=4,
                          max_completion_length=4, report_to=[], use_cpu=True, beta=0.1, bf16=False)
    data = Dataset.from_dict({"prompt": ["w1 w2"] * 4})
    _model().save_pretrained(tmp_path / "tiny")
    trainer = trl.GRPOTrainer(model=str(tmp_path / "tiny"), reward_funcs=_reward, args=args, train_dataset=data,
                              processing_class=_tokenizer())
    assert "use_bias_correction_kl" in unsupported_reason(trainer)  # TRL default True with beta > 0
    trainer.loss_type = "cispo"
    assert "cispo" in unsupported_reason(trainer)


def test_rejects_non_trainer():
    with pytest.raises(TypeError, match="GRPOTrainer"):
        use_semgrpo_loss(object())
