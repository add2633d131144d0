"""ZeRO-3 on 2 ranks loads the policy partitioned: each rank holds about half of every weight from the start,
the init_from chain is merged layer by layer, and the result equals the whole-weight load."""
import json
import shutil
from pathlib import Path

import pytest
from _helpers import deepspeed_launcher, fake_run_stage, run_cli

pytestmark = pytest.mark.skipif(shutil.which("deepspeed") is None, reason="the deepspeed launcher is not on PATH")

ROOT = Path(__file__).resolve().parents[1]


def _llama_labelled(policy_path, folder):
    """The demo's Qwen3 weights under a config.json that says Llama: a Llama has no q_norm / k_norm."""
    shutil.copytree(policy_path, folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(cfg, model_type="llama", architectures=["LlamaForCausalLM"])))
    return folder


MISMATCH = ("does not fit the LlamaForCausalLM its config.json builds: tensors the model has no place for: 4 "
            "(model.layers.0.self_attn.k_norm.weight, model.layers.0.self_attn.q_norm.weight, "
            "model.layers.1.self_attn.k_norm.weight, model.layers.1.self_attn.q_norm.weight)")


def test_partitioned_load_with_an_adapter_chain_equals_the_whole_weight_load(demo_assets, tmp_path):
    """... and a checkpoint under another architecture's config.json is refused on both ranks (issue 27: it trained,
    its q_norm / k_norm weights silently dropped)."""
    a = demo_assets
    common = dict(base_path=a.policy_path, tokenizer_path=a.tokenizer_path, data_path=a.dev_path,
                  encoder=a.encoder_path)
    fake_run_stage(tmp_path / "stage1", init_from="", seed=1, **common)
    fake_run_stage(tmp_path / "stage2", init_from=str(tmp_path / "stage1"), seed=2, **common)
    llama = _llama_labelled(a.policy_path, tmp_path / "llama")
    out = tmp_path / "probe.json"
    proc = run_cli("../tests/_partitioned_probe.py", str(out), f"model.init_from={tmp_path / 'stage2'}",
                   launcher=deepspeed_launcher(), env={"PROBE_MISMATCHED_MODEL": str(llama)})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    reports = [json.loads((tmp_path / f"probe.json.rank{r}").read_text()) for r in (0, 1)]
    for rep in reports:
        assert rep["mismatched"] is not None and rep["mismatched"].startswith("ConfigError: model.path"), rep["mismatched"]
        assert MISMATCH in rep["mismatched"], rep["mismatched"]
    names = reports[0]["params"].keys()
    assert any("lora_A" in n for n in names)  # the fresh adapter of the run
    # The fresh LoRA is small, random per build and partitioned later by deepspeed.initialize; the base
    # weights are partitioned as they load and, merged, equal the whole-weight load.
    base = [n for n in names if "lora_" not in n]
    for name in base:
        held = [rep["params"][name]["held"] for rep in reports]
        total = reports[0]["params"][name]["total"]
        # Each rank holds its half (DeepSpeed pads a partition to an even split).
        assert all(h < total for h in held) and sum(held) >= total, (name, held, total)
        for rep in reports:
            assert rep["params"][name]["max_diff"] <= 1e-6, (name, rep["params"][name])
    # The chain changed the weights it targets (so equality above is not trivially "nothing merged").
    changed = [n for n in base if (reports[0]["params"][n]["merged_change"] or 0) > 1e-4]
    assert changed and all("proj" in n for n in changed), changed


def test_a_checkpoint_that_does_not_fit_its_config_is_refused_on_the_whole_weight_path(demo_assets, tmp_path):
    """One process loads whole weights: the same check, on a model built on the meta device, before loading."""
    from safetensors.torch import load_file, save_file

    from semgrpo.config import ConfigError, ModelConfig
    from semgrpo.modeling import load_policy

    def refused(folder):
        with pytest.raises(ConfigError) as err:
            load_policy(ModelConfig(path=str(folder)), dtype="fp32")
        assert "\n" not in str(err.value)
        return str(err.value)

    assert MISMATCH in refused(_llama_labelled(demo_assets.policy_path, tmp_path / "llama"))
    weights = load_file(str(demo_assets.policy_path / "model.safetensors"))
    for name, change in {"missing": lambda w: w.pop("model.norm.weight"),
                         "reshaped": lambda w: w.update({"model.norm.weight": w["model.norm.weight"][:64]})}.items():
        folder = shutil.copytree(demo_assets.policy_path, tmp_path / name)
        changed = dict(weights)
        change(changed)
        save_file(changed, str(folder / "model.safetensors"), metadata={"format": "pt"})
        message = refused(folder)
        expected = {"missing": "weights the checkpoint lacks: 1 (model.norm.weight)",
                    "reshaped": "tensors of another shape, checkpoint vs model: 1 (model.norm.weight [64] vs [128])"}
        assert expected[name] in message, message
    # The demo itself fits: its lm_head is tied to the embeddings and not stored.
    assert "lm_head.weight" not in weights
    load_policy(ModelConfig(path=str(demo_assets.policy_path)), dtype="fp32", lora=False)


def _write_300m_model(folder, tokenizer_dir, adapter_dir):
    """A random Qwen3-architecture model of 315M parameters (fp32, 1.26 GB) with the demo's tokenizer, and a
    random stage-1 LoRA adapter for it. Returns the model's bytes."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Qwen3Config

    cfg = Qwen3Config(vocab_size=764, hidden_size=1024, intermediate_size=3072, num_hidden_layers=20,
                      num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True,
                      max_position_embeddings=512, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, folder / name)
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    peft = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    for name, p in peft.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.01)
    peft.save_pretrained(adapter_dir)
    return nbytes


def _start_peak_rss(launches, tmp_path, name, *overrides):
    """Start the memory probe's 2-rank run; its output and run folder go to tmp_path/<name>/. Each rank reports
    its own process's peak RSS, so runs that overlap in time do not change each other's figures."""
    import os

    (tmp_path / name).mkdir()
    out = tmp_path / name / f"{name}.json"
    # glibc's malloc keeps freed blocks below its (growing) mmap threshold in its arenas, so a CPU run's RSS
    # would count every layer ever gathered; a fixed threshold returns them, as CUDA's allocator does.
    return launches.start("../tests/_memory_probe.py", str(out), *overrides, launcher=deepspeed_launcher(),
                          log=tmp_path / f"{name}.log",
                          env={"MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": str(os.cpu_count())})


def _peak_rss(launches, tmp_path, name, proc):
    returncode, output = launches.wait(proc, timeout=900)
    assert returncode == 0, output
    return [json.loads((tmp_path / name / f"{name}.json.rank{r}").read_text()) for r in (0, 1)]


def test_a_300m_model_costs_each_of_2_ranks_at_most_0_65x_its_bytes(demo_assets, tmp_path, launches):
    """One GRPO step without the gather-once generation: weights partitioned while loading (init_from
    merged layer by layer), sampled and trained layer by layer. The ZeRO-3 limits on live parameters are
    scaled to this model (1/20 of it live, as 1e9 of DeepSpeed's default is of a 20B model)."""
    ds = json.loads((ROOT / "ds_configs" / "zero3.json").read_text())
    ds.update(train_micro_batch_size_per_gpu=2, gradient_accumulation_steps=1)
    ds["zero_optimization"].update(stage3_max_live_parameters=16_000_000, stage3_max_reuse_distance=16_000_000,
                                   stage3_prefetch_bucket_size=16_000_000, reduce_bucket_size=16_000_000)
    (tmp_path / "zero3.json").write_text(json.dumps(ds))
    common = ["sft.before_grpo=false", "reward.tau=0.1", "reward.functions=[language]", "tax_meter.every_steps=0",
              "grpo.gather_for_generation=false", "grpo.gathered_policy_pass=false", "grpo.beta=0",
              "grpo.merge_adapter_for_generation=false", "grpo.max_completion_length=2", "grpo.group_size=2",
              "model.lora.r=4", "model.gradient_checkpointing=true", f"run.deepspeed={tmp_path / 'zero3.json'}"]
    # The tiny policy's baseline run goes on while the 300M model is written and while it runs.
    tiny_run = _start_peak_rss(launches, tmp_path, "tiny", *common)
    big = tmp_path / "qwen3_300m"
    model_bytes = _write_300m_model(big, demo_assets.tokenizer_path, tmp_path / "stage1_adapter")
    assert model_bytes >= 300e6 * 4
    large_run = _start_peak_rss(launches, tmp_path, "large", *common, f"model.path={big}",
                                f"model.tokenizer={big}", f"model.init_from={tmp_path / 'stage1_adapter'}")
    tiny = _peak_rss(launches, tmp_path, "tiny", tiny_run)
    large = _peak_rss(launches, tmp_path, "large", large_run)
    for t, g in zip(tiny, large):
        extra = g["peak_rss"] - t["peak_rss"]
        print(f"rank {g['rank']}: peak RSS {g['peak_rss'] / 2**20:.0f} MiB, tiny policy {t['peak_rss'] / 2**20:.0f} "
              f"MiB: +{extra / 2**20:.0f} MiB = {extra / model_bytes:.2f}x the model's {model_bytes / 2**20:.0f} MiB")
        assert extra <= 0.65 * model_bytes, (g, t)
