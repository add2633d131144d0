"""semgrpo.rollout: the HF `generate` fallback (synced_gpus) samples what the GRPO log-probs score.

The log-probs model temperature and top-p only. A checkpoint's own generation_config may carry more
(repetition penalty, min-p, top-k, n-gram bans); none of that may reach the rollout.
"""
from __future__ import annotations

import pytest
import torch
from _ds_single import init_single_process
from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

from semgrpo.rollout import generate

VOCAB, PAD, EOS = 48, 0, 1
PROMPTS = [[5, 9, 13, 2], [7, 3], [11, 12, 14, 15, 16, 17], [4]]
# Settings a checkpoint may ship that change which token comes next; the GRPO loss models none of them.
EXTRAS = dict(repetition_penalty=5.0, min_p=0.5, top_k=1, no_repeat_ngram_size=2, temperature=0.3, top_p=0.5,
              do_sample=True, max_new_tokens=3)


def _tiny_lm(extras: dict | None) -> Qwen3ForCausalLM:
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, pad_token_id=PAD,
                      eos_token_id=EOS, bos_token_id=None)
    model = Qwen3ForCausalLM(cfg).eval()
    if extras is not None:
        model.generation_config = GenerationConfig(pad_token_id=PAD, eos_token_id=EOS, **extras)
    return model


@pytest.fixture(scope="module")
def lm_with_extras():
    return _tiny_lm(EXTRAS)


@pytest.fixture(scope="module")
def one_rank():
    """HF's synced_gpus loop all-reduces a 'finished' flag each step, so it needs a process group (1 rank)."""
    init_single_process()


def _run(model, *, synced: bool, greedy: bool = True, **kw):
    return generate(model, PROMPTS, device="cpu", pad_id=PAD, eos_ids=[EOS], max_new_tokens=kw.pop("n", 16),
                    temperature=kw.pop("temperature", 1.0), top_p=kw.pop("top_p", 1.0), greedy=greedy,
                    synced_gpus=synced, **kw)


def _same_tokens(a, b) -> bool:
    width = max(a.completion_ids.shape[1], b.completion_ids.shape[1])
    pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]), value=PAD)
    return (torch.equal(pad(a.completion_ids), pad(b.completion_ids))
            and torch.equal(pad(a.completion_mask), pad(b.completion_mask)))


def test_synced_greedy_ignores_the_checkpoint_generation_config(lm_with_extras, one_rank):
    lean = _run(lm_with_extras, synced=False)
    synced = _run(lm_with_extras, synced=True, batch_size=3)
    assert lean.completion_ids.shape[1] == 16  # no max_new_tokens=3 from the checkpoint
    assert _same_tokens(synced, lean), f"\n{synced.completion_ids.tolist()}\n{lean.completion_ids.tolist()}"
    # The checkpoint's settings really would change the output (else this test would prove nothing).
    inherited = lm_with_extras.generate(input_ids=synced.prompt_ids, attention_mask=synced.prompt_mask,
                                        max_new_tokens=16, do_sample=False, eos_token_id=[EOS], pad_token_id=PAD)
    assert not torch.equal(inherited[:, synced.prompt_ids.shape[1]:], synced.completion_ids)


def test_synced_greedy_under_peft_ignores_the_base_generation_config(one_rank):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_tiny_lm(EXTRAS), LoraConfig(r=2, target_modules=["q_proj", "v_proj"])).eval()
    assert _same_tokens(_run(model, synced=True), _run(model, synced=False))


def _effective_configs(model, monkeypatch) -> list[GenerationConfig]:
    """The configs HF's generate actually runs with, after merging in the model's own generation_config."""
    seen = []
    prepare = type(model)._prepare_generation_config

    def spy(self, generation_config, **kwargs):
        out = prepare(self, generation_config, **kwargs)
        seen.append(out[0])
        return out

    monkeypatch.setattr(type(model), "_prepare_generation_config", spy)
    return seen


@pytest.mark.parametrize("greedy", [True, False])
def test_synced_generation_runs_only_the_settings_the_loss_models(lm_with_extras, one_rank, monkeypatch, greedy):
    seen = _effective_configs(lm_with_extras, monkeypatch)
    torch.manual_seed(0)
    _run(lm_with_extras, synced=True, greedy=greedy, temperature=0.8, top_p=0.9, n=5, batch_size=2)
    assert len(seen) == 2  # two batches
    for cfg in seen:
        got = dict(do_sample=cfg.do_sample, max_new_tokens=cfg.max_new_tokens, min_p=cfg.min_p,
                   repetition_penalty=cfg.repetition_penalty, no_repeat_ngram_size=cfg.no_repeat_ngram_size,
                   num_beams=cfg.num_beams)
        want = dict(do_sample=not greedy, max_new_tokens=5, min_p=None, repetition_penalty=1.0,
                    no_repeat_ngram_size=0, num_beams=1)
        assert got == want
        if not greedy:  # (top-k and the warpers only act when sampling)
            assert (cfg.temperature, cfg.top_p, cfg.top_k) == (0.8, 0.9, 0)
    # The model's own settings are back in place afterwards.
    assert lm_with_extras.generation_config.repetition_penalty == 5.0
    assert lm_with_extras.generation_config.min_p == 0.5
