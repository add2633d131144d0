"""The memory plan ("Will it fit?", semgrpo/memory_plan/): its model states against DeepSpeed's own estimators,
its LoRA count against peft's, its KV cache against a real cache, its advice, and `--plan-only` as a user runs it.

The models here are config.json files only (no weights): the plan builds them on the meta device."""
import json
import re

import pytest
import torch
from _helpers import REPO, run_cli

from semgrpo import cli
from semgrpo.config import load_config
from semgrpo.ds_config import load_ds_config
from semgrpo.memory_plan import GiB, MiB, announce_plan, plan_for_config

QWEN3_4B = dict(hidden_size=2560, num_hidden_layers=36, intermediate_size=9728, num_attention_heads=32,
                num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True)
ZERO3, ZERO2, ZERO3_OFFLOAD = (str(REPO / "ds_configs" / f"{n}.json") for n in ("zero3", "zero2", "zero3_offload"))
STATE_ROWS = ("parameters", "gradients", "optimizer states", "ZeRO buffers")


def qwen3_4b_counts():
    """(total, largest layer) of the Qwen3-4B shape counted by hand, independently of the plan's meta model."""
    h, layers, inter, heads, kv, hd, vocab = (QWEN3_4B[k] for k in ("hidden_size", "num_hidden_layers",
                                              "intermediate_size", "num_attention_heads", "num_key_value_heads",
                                              "head_dim", "vocab_size"))
    attention = h * heads * hd + 2 * h * kv * hd + heads * hd * h + 2 * hd  # q, k, v, o + q/k RMSNorm
    layer = attention + 3 * h * inter + 2 * h  # + gate/up/down + two RMSNorms
    embedding = vocab * h  # tied: lm_head is the same tensor and counts once
    return embedding + layers * layer + h, embedding


@pytest.fixture(scope="module")
def qwen3_4b(tmp_path_factory):
    from transformers import Qwen3Config

    path = tmp_path_factory.mktemp("qwen3-4b")
    Qwen3Config(**QWEN3_4B).save_pretrained(path)
    assert [p.name for p in path.iterdir()] == ["config.json"]  # no weights, no tokenizer
    return path


TINY = dict(hidden_size=64, num_hidden_layers=3, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
            head_dim=24, vocab_size=300, tie_word_embeddings=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Qwen3 with grouped-query attention and head_dim != hidden / heads: its config.json and the model."""
    from transformers import AutoModelForCausalLM, Qwen3Config

    path = tmp_path_factory.mktemp("tiny-qwen3")
    config = Qwen3Config(**TINY)
    config.save_pretrained(path)
    torch.manual_seed(0)
    return path, AutoModelForCausalLM.from_config(config)


def _plan(path, *overrides, ds=ZERO3, world_size=8, num_nodes=1, dtype="bf16", stage="grpo"):
    cfg = load_config([], [f"model.path={path}", f"run.deepspeed={ds}", *overrides])
    ds_config, _ = load_ds_config(ds, dtype=dtype, world_size=world_size)
    return plan_for_config(cfg, world_size=world_size, ds_config=ds_config, dtype=dtype, num_nodes=num_nodes,
                           stage=stage)


def _states(plan, where="gpu"):
    return {label: getattr(plan.row(label), where) or 0 for label in STATE_ROWS}


# ------------------------------------------------------------------------- model states vs DeepSpeed


def test_qwen3_4b_zero3_full_parameter_equals_deepspeeds_estimator(qwen3_4b):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    total, largest = qwen3_4b_counts()
    assert total == 4_022_468_096  # Qwen3-4B's published size
    _, estimate, _ = estimate_zero3_model_states_mem_needs(total, largest, num_gpus_per_node=8, num_nodes=1,
                                                           cpu_offload=False, cpu_offload_params=False)
    plan = _plan(qwen3_4b, "model.lora.enabled=false")
    rows = _states(plan)
    # The 2 / 2 / 12 B convention, partitioned over 8 ranks.
    assert rows["parameters"] == int(2 * total / 8)
    assert rows["gradients"] == int(2 * total / 8)
    assert rows["optimizer states"] == int(12 * total / 8)
    # DeepSpeed's estimator counts 18 B per parameter under ZeRO-3 (not 2 + 2 + 12 = 16) plus the largest layer
    # gathered with its gradient (4 B per parameter of it); the ZeRO buffers row is that difference.
    assert abs(rows["ZeRO buffers"] - (4 * largest + 2 * total / 8)) <= 2
    assert sum(rows.values()) == plan.model_states_gpu == plan.row("= model states").gpu == estimate
    assert plan.row("reference").gpu == 0  # grpo.beta = 0


def test_zero2_equals_deepspeeds_estimator(qwen3_4b):
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    total, _ = qwen3_4b_counts()
    _, estimate = estimate_zero2_model_states_mem_needs(total, num_gpus_per_node=8, num_nodes=1, cpu_offload=False)
    rows = _states(_plan(qwen3_4b, "model.lora.enabled=false", ds=ZERO2))
    assert rows["parameters"] == 2 * total  # whole on every rank
    assert rows["gradients"] == int(2 * total / 8)
    assert rows["optimizer states"] == int(12 * total / 8)
    # DeepSpeed's ZeRO-2 estimator: 2 B whole weights + 18 B / N, where 18 = 2 B + 4 B fp32 gradient + 12 B.
    assert abs(rows["ZeRO buffers"] - 4 * total / 8) <= 2
    assert sum(rows.values()) == estimate


def test_offload_moves_rows_to_the_host(qwen3_4b, tmp_path):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    total, largest = qwen3_4b_counts()
    resident = _plan(qwen3_4b, "model.lora.enabled=false", "grpo.beta=0.04")
    offloaded = _plan(qwen3_4b, "model.lora.enabled=false", "grpo.beta=0.04", ds=ZERO3_OFFLOAD)
    for label in ("parameters", "gradients", "optimizer states", "reference"):
        before, after = resident.row(label), offloaded.row(label)
        assert before.gpu > 0 and before.host is None, label
        assert after.gpu == 0 and after.host == before.gpu * 8, label  # host figures are per node (8 GPUs)
    _, estimate, _ = estimate_zero3_model_states_mem_needs(total, largest, num_gpus_per_node=8, num_nodes=1,
                                                           cpu_offload=True, cpu_offload_params=True)
    assert offloaded.model_states_gpu == estimate == 4 * largest  # only the largest layer's working buffers
    assert "optimizer on cpu, weights on cpu" in offloaded.format()

    # ZeRO-2 offloads the optimizer (and the gradient partitions with it); the 16-bit weights stay.
    ds = json.loads((REPO / "ds_configs" / "zero2.json").read_text())
    ds["zero_optimization"]["offload_optimizer"] = {"device": "cpu"}
    (tmp_path / "zero2_offload.json").write_text(json.dumps(ds))
    plan = _plan(qwen3_4b, "model.lora.enabled=false", ds=str(tmp_path / "zero2_offload.json"))
    _, estimate = estimate_zero2_model_states_mem_needs(total, num_gpus_per_node=8, num_nodes=1, cpu_offload=True)
    assert plan.row("gradients").gpu == plan.row("optimizer states").gpu == 0
    assert plan.row("optimizer states").host == 12 * total
    assert plan.model_states_gpu == estimate == 2 * total


def test_nodes_share_the_world_and_host_figures_are_per_node(qwen3_4b, monkeypatch):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    from semgrpo.memory_plan import nodes_from_env

    total, largest = qwen3_4b_counts()
    plan = _plan(qwen3_4b, "model.lora.enabled=false", ds=ZERO3_OFFLOAD, world_size=16, num_nodes=2)
    assert "ZeRO-3 on 16 GPUs (2 nodes x 8)" in plan.format()
    assert plan.row("optimizer states").host == int(12 * total / 16) * 8
    host, gpu, _ = estimate_zero3_model_states_mem_needs(total, largest, num_gpus_per_node=8, num_nodes=2)
    assert plan.model_states_gpu == gpu and f"{host / GiB:.2f} GiB host per node" in plan.format()
    for name in ("CROSS_SIZE", "LOCAL_WORLD_SIZE", "LOCAL_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert nodes_from_env(16) == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # torchrun
    assert nodes_from_env(16) == 2
    monkeypatch.setenv("CROSS_SIZE", "4")  # DeepSpeed's launcher
    assert nodes_from_env(16) == 4


def test_reference_is_a_partitioned_copy_only_for_full_parameter_runs_with_beta(qwen3_4b):
    total, _ = qwen3_4b_counts()
    assert _plan(qwen3_4b, "model.lora.enabled=false", "grpo.beta=0.04").row("reference").gpu == total * 2 // 8
    assert _plan(qwen3_4b, "model.lora.enabled=false", "grpo.beta=0.04", ds=ZERO2).row("reference").gpu == 2 * total
    lora = _plan(qwen3_4b, "grpo.beta=0.04")
    assert lora.row("reference").gpu == 0 and "adapter disabled" in lora.row("reference").basis
    assert [r.label for r in _plan(qwen3_4b, stage="sft").rows if r.label in ("reference", "rollout")] == []


def test_lora_trains_only_the_adapters_and_the_base_is_frozen(qwen3_4b):
    total, largest = qwen3_4b_counts()
    plan = _plan(qwen3_4b)  # LoRA r=64 on q/k/v/o/gate/up/down
    h, kv = QWEN3_4B["hidden_size"], QWEN3_4B["num_key_value_heads"] * QWEN3_4B["head_dim"]
    q = QWEN3_4B["num_attention_heads"] * QWEN3_4B["head_dim"]
    inter = QWEN3_4B["intermediate_size"]
    adapters = 36 * 64 * ((h + q) + 2 * (h + kv) + (q + h) + 2 * (h + inter) + (inter + h))
    assert plan.row("gradients").gpu == int(2 * adapters / 8)
    assert plan.row("optimizer states").gpu == int(12 * adapters / 8)
    assert plan.row("parameters").gpu == int(2 * (total + adapters) / 8)  # frozen base + adapters
    assert f"{adapters / 1e6:.2f} M trainable" in plan.format()


@pytest.mark.parametrize("r,targets", [(64, None), (4, ["q_proj", "v_proj"]), (8, ["down_proj", "o_proj", "k_proj"])])
def test_lora_count_equals_peft(tiny, r, targets):
    import copy

    from peft import LoraConfig, get_peft_model

    path, model = tiny
    overrides = [f"model.lora.r={r}"] + ([f"model.lora.target_modules={','.join(targets)}"] if targets else [])
    plan_cfg = load_config([], [f"model.path={path}", *overrides])
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=r, lora_alpha=2 * r,
                                                                 target_modules=plan_cfg.model.lora.target_modules))
    trainable, _ = peft_model.get_nb_trainable_parameters()
    plan = _plan(path, *overrides, world_size=1, dtype="fp32")
    assert plan.row("gradients").gpu == 4 * trainable  # fp32: 4 B per trainable parameter


def test_unknown_lora_target_is_a_config_error(tiny):
    from semgrpo.config import ConfigError

    with pytest.raises(ConfigError, match=r"target_modules \['qkv_proj'\] are not modules"):
        _plan(tiny[0], "model.lora.target_modules=[q_proj,qkv_proj]", world_size=1)


# ---------------------------------------------------------------------------------- KV cache and logits


def test_kv_cache_equals_a_real_cache(tiny):
    """The rollout row under ZeRO-2 (no gathered weights) is the KV cache alone: compare it with the bytes of a
    DynamicCache after a forward over the same number of sequences and tokens."""
    from transformers import DynamicCache

    path, model = tiny
    prompt, completion, sequences = 7, 5, 3
    model = model.to(torch.bfloat16)
    cache = DynamicCache()
    with torch.no_grad():
        model(input_ids=torch.randint(0, TINY["vocab_size"], (sequences, prompt + completion)), past_key_values=cache,
              use_cache=True)
    cached = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    plan = _plan(path, f"data.max_prompt_length={prompt}", f"grpo.max_completion_length={completion}",
                 f"grpo.generation_batch_size={sequences}", ds=ZERO2, world_size=1)
    assert plan.row("rollout").gpu == cached
    # generation_batch_size 0 samples all this rank's completions at once: micro 8 x accumulation 2 in zero2.json.
    lengths = (f"data.max_prompt_length={prompt}", f"grpo.max_completion_length={completion}")
    everything = _plan(path, *lengths, "reward.tau=0.5", ds=ZERO2, world_size=1)
    assert everything.row("rollout").gpu == cached * 16 // sequences
    # Measuring tau (reward.tau=auto) generates for this rank's share of reward.tau_samples prompts at once.
    tau = _plan(path, *lengths, "reward.tau_samples=64", ds=ZERO2, world_size=1)
    assert tau.row("rollout").gpu == cached * 64 // sequences and "(tau)" in tau.row("rollout").basis
    assert "reward.tau_samples" in " ".join(tau.check(1))
    assert _plan(path, *lengths, "reward.tau_samples=64", ds=ZERO2, world_size=8).row("rollout").gpu == \
        cached * 16 // sequences  # 8 prompts per rank: the step's 16 completions are the larger batch
    # Under ZeRO-3 the gathered rollout adds the full weights in the model dtype.
    gathered = _plan(path, "model.lora.enabled=false", f"data.max_prompt_length={prompt}",
                     f"grpo.max_completion_length={completion}", f"grpo.generation_batch_size={sequences}",
                     world_size=2)
    weights = sum(p.numel() for p in model.parameters())
    assert gathered.row("rollout").gpu == cached + 2 * weights
    layer_by_layer = _plan(path, "model.lora.enabled=false", "grpo.gather_for_generation=false",
                           f"data.max_prompt_length={prompt}", f"grpo.max_completion_length={completion}",
                           f"grpo.generation_batch_size={sequences}", world_size=2)
    assert layer_by_layer.row("rollout").gpu == cached


def test_fused_head_of_grpo_and_logits_of_sft(qwen3_4b):
    plan = _plan(qwen3_4b, "grpo.max_completion_length=256")
    # GRPO fuses the head: micro 8 x 256 completion tokens x hidden 2560 (a bf16 copy + an fp32 gradient) and
    # three 32 MiB fp32 tiles (LoRA: the head does not train), nothing of the vocabulary's size.
    assert plan.row("LM head (fused)").gpu == 8 * 256 * 2560 * (2 + 4) + 3 * 32 * 2**20
    assert "logits (micro-batch)" not in [r.label for r in plan.rows]
    full = _plan(qwen3_4b, "grpo.max_completion_length=256", "model.lora.enabled=false")
    assert full.row("LM head (fused)").gpu == 8 * 256 * 2560 * (2 + 4) + 4 * 32 * 2**20
    # SFT still computes HF's cross-entropy on the logits: the bf16 logits, their fp32 copy and its gradient.
    sft = _plan(qwen3_4b, "sft.max_length=1024", stage="sft")
    assert sft.row("logits (micro-batch)").gpu == 8 * 1024 * 151936 * (2 + 4 + 4)


# -------------------------------------------------------------------------------------------- advice


def test_budget_exceeded_names_the_knobs(qwen3_4b):
    plan = _plan(qwen3_4b, "model.lora.enabled=false")
    assert plan.check(None) == [] and plan.check(1000 * GiB) == []
    warnings = plan.check(8 * GiB)
    text = "\n".join(warnings)
    assert all(line.startswith("semgrpo: warning: ") for line in warnings) and len(warnings) == 3, text
    states, rollout, logits = warnings
    assert "model states need" in states and "ds_configs/zero3_offload.json" in states
    assert "model.lora.enabled=true" in states
    assert "rollout" in rollout and "grpo.gather_for_generation=false" in rollout
    assert "grpo.generation_batch_size=8" in rollout
    assert "LM head" in logits and f"train_micro_batch_size_per_gpu=4 in {ZERO3}" in logits
    assert "grpo.gathered_policy_pass=false" in logits
    # Between model states and model states + rollout: only the transient rows warn.
    fits_states = plan.check(int(plan.model_states_gpu + 1 * GiB))
    assert len(fits_states) == 2 and "model states need" not in "".join(fits_states)
    zero2 = "\n".join(_plan(qwen3_4b, "model.lora.enabled=false", ds=ZERO2).check(8 * GiB))
    assert "run.deepspeed=ds_configs/zero3.json" in zero2 and "gather_for_generation" not in zero2


def test_announce_plan_prints_on_rank_0_and_never_raises(qwen3_4b, capsys):
    cfg = load_config([], [f"model.path={qwen3_4b}", "model.lora.enabled=false", "run.gpu_memory_gib=8"])
    ds_config, _ = load_ds_config(ZERO3, dtype="bf16", world_size=8)
    announce_plan(cfg, world_size=8, ds_config=ds_config, dtype="bf16")
    out = capsys.readouterr().out
    assert "memory plan of GRPO" in out and "8.00 GiB per GPU (run.gpu_memory_gib)" in out
    assert out.count("semgrpo: warning:") == 3
    cfg.model.path = str(qwen3_4b.parent / "missing")  # advice only: a plan it cannot make is one line
    announce_plan(cfg, world_size=8, ds_config=ds_config, dtype="bf16")
    assert capsys.readouterr().out.startswith("semgrpo: no memory plan (model.path")


# ------------------------------------------------------------------------------------ the command line


def _gib(text):
    value, unit = text.split()
    return float(value) * {"GiB": GiB, "MiB": MiB, "KiB": 1024}[unit]


def test_plan_only_as_a_user_runs_it(qwen3_4b):
    """Qwen3-4B on 8 GPUs, ZeRO-3, bf16, full-parameter, from a directory that holds only config.json, with the
    paper's config (whose data and encoder paths do not exist here: the plan reads neither)."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    proc = run_cli("train_grpo.py", "--config", "configs/mt_zh_bo.yaml", "--plan-only", "--world-size", "8",
                   "--gpu-memory", "16", f"model.path={qwen3_4b}", "model.lora.enabled=false", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "ZeRO-3 on 8 GPUs (1 node x 8), bf16 weights" in out and "full-parameter training" in out, out
    figures = {}
    for label in (*STATE_ROWS, "= model states"):
        match = re.search(rf"^  {re.escape(label)}\s+([\d.]+ [KMG]iB)", out, re.MULTILINE)
        assert match, (label, out)
        figures[label] = _gib(match.group(1))
    total, largest = qwen3_4b_counts()
    _, estimate, _ = estimate_zero3_model_states_mem_needs(total, largest, num_gpus_per_node=8, num_nodes=1,
                                                           cpu_offload=False, cpu_offload_params=False)
    rounding = 0.006 * GiB  # two decimals of GiB
    assert abs(figures["= model states"] - estimate) < rounding
    assert abs(sum(figures[label] for label in STATE_ROWS) - estimate) < 4 * rounding
    # parameters + gradients + optimizer are 16 B / 8 GPUs; the estimator adds 2 B / 8 and the largest layer x 4 B.
    three = figures["parameters"] + figures["gradients"] + figures["optimizer states"]
    assert abs(three - 16 * total / 8) < 3 * rounding
    assert abs(estimate - three - (4 * largest + 2 * total / 8)) < 3 * rounding
    # The 16 GiB budget is exceeded by the rollout and the logits peaks: one warning each, naming the knobs.
    warnings = [line for line in out.splitlines() if line.startswith("semgrpo: warning:")]
    assert len(warnings) == 2, out
    assert "grpo.gather_for_generation=false" in warnings[0]
    assert "train_micro_batch_size_per_gpu=4" in warnings[1]
    assert '"summary"' not in out and "{" not in out  # no run, no summary JSON


def test_plan_only_of_the_demo(demo_assets):
    proc = run_cli("train_grpo.py", "--plan-only", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # demo.yaml runs the cold start first (sft.before_grpo): both stages are planned.
    assert "memory plan of SFT" in proc.stdout and "memory plan of GRPO" in proc.stdout, proc.stdout
    assert "LoRA r=16" in proc.stdout and "merged copy" in proc.stdout


@pytest.fixture
def user_shell(monkeypatch):
    """In-process CLI calls see no launcher variables that other in-process tests may have left."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "CROSS_SIZE", "LOCAL_SIZE"):
        monkeypatch.delenv(name, raising=False)


def _one_error_line(capsys, code, *needles):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("args,needles", [
    (["--gpu-memory", "-1"], ["run.gpu_memory_gib must be a finite number >= 0, got -1.0"]),
    (["--world-size", "0"], ["--world-size must be >= 1, got 0"]),
    (["--world-size", "6", "--num-nodes", "4"], ["cannot be spread evenly over --num-nodes 4"]),
    (["model.path="], ["model.path is not set"]),
    (["model.lora.target_modules=[]"], ["model.lora.target_modules is empty"]),  # issue 27: was planned
], ids=["negative-budget", "world-0", "uneven-nodes", "no-model-path", "no-lora-targets"])
def test_plan_only_user_errors(user_shell, capsys, qwen3_4b, args, needles):
    argv = ["--config", str(REPO / "configs" / "mt_zh_bo.yaml"), "--plan-only", f"model.path={qwen3_4b}", *args]
    _one_error_line(capsys, cli.main_grpo(argv), *needles)


def test_plan_only_model_path_without_config_json(user_shell, capsys, tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text("{}")
    argv = ["--config", str(REPO / "configs" / "mt_zh_bo.yaml"), "--plan-only", f"model.path={tmp_path}"]
    _one_error_line(capsys, cli.main_sft(argv), "model.path", "holds no config.json")


def test_plan_only_unreadable_config_json(user_shell, capsys, tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "qwen3", "hidden_size": ')
    argv = ["--config", str(REPO / "configs" / "mt_zh_bo.yaml"), "--plan-only", f"model.path={tmp_path}"]
    _one_error_line(capsys, cli.main_grpo(argv), "model.path", "cannot build the model from its config.json")


def test_world_size_without_plan_only_is_refused(user_shell, capsys):
    _one_error_line(capsys, cli.main_grpo(["--world-size", "8"]), "--world-size and --num-nodes only go with --plan-only")


def test_negative_gpu_memory_from_the_shell():
    proc = run_cli("train_sft.py", "--plan-only", "--gpu-memory", "-1", timeout=120)
    lines = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines == ["train_sft.py: error: run.gpu_memory_gib must be a finite number >= 0, got -1.0"]
