"""One benchmark run of a GRPO trainer in this process: ours (`semgrpo.train.grpo_step`) or TRL's GRPOTrainer.

`bench_train.py` starts each run in its own subprocess (so peak RSS is per run) as

    python benchmarks/train_runners.py --provider {semgrpo,trl} --steps N --warmup W --out run.json

Both runs use the same work: the demo's tiny Qwen3 policy and tokenizer (`semgrpo.demo.build_demo`,
default cache), the demo's zh->bo prompts (`mt_zh_bo`), one shared reward object (`BenchReward`), group
size 8, 2 prompts x 8 completions per optimizer step split into micro-batches as the DeepSpeed JSON says
(TRL: per_device_train_batch_size and gradient_accumulation_steps set to the same), at most 16 completion
tokens, LoRA r/alpha/targets, lr, beta, temperature and top-p from `configs/demo.yaml`. The JSON holds one
record per measured step:

    generation, reward, logprobs, policy (forward+backward), optimizer, other, step  (seconds)
    tokens (completion tokens generated, eos included), samples (completions)

`step` is the wall time between the ends of consecutive steps (everything the trainer does per step);
`other` = step - the named phases. Phase boundaries:

    ours  perf/{generation,reward,logprobs,policy}_seconds from grpo_step; optimizer = time inside
          engine.step (wrapped here), subtracted from policy.
    TRL   generation = _generate; reward = _calculate_rewards; logprobs = _get_per_token_logps_and_entropies
          calls made inside _generate_and_score_completions (old/ref); policy = training_step minus
          _generate_and_score_completions; optimizer = end of training_step to on_optimizer_step
          (gradient clipping + optimizer.step, as engine.step does for ours).

Where the two differ in bookkeeping: our `logprobs` lap also holds the advantages and the global token
count (one all-reduce); TRL's advantages, padding and metric gathering inside
_generate_and_score_completions land in its `other` (also recorded alone as `gs_other`), and its
per-step logging (logging_steps=1, about 1 ms) too. The semgrpo loop here does no TensorBoard logging.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PHASES = ("generation", "reward", "logprobs", "policy", "optimizer")
PROVIDERS = ("semgrpo", "trl")
PROMPTS_PER_STEP = 2


class BenchReward:
    """R = R_lang (target script, not mixed) + a length term 1 - |len(c) - len(r)| / max(len(c), len(r), 1).

    The continuous length term makes groups whose rewards are all equal rare, so both trainers run the
    backward pass on (nearly) every group. semgrpo calls it positionally; TRL with keyword arguments
    (the dataset's `reference` column). The same object serves both.
    """

    def __init__(self, script: str):
        from semgrpo.rewards import LanguageConsistency

        self.lang = LanguageConsistency(script)
        self.__name__ = "bench_reward"

    def __call__(self, prompts, completions, references=None, *, reference=None, **_) -> list[float]:
        references = references if references is not None else reference
        if references is None or len(references) != len(completions):
            raise ValueError(f"BenchReward needs one reference per completion, got {references!r}")
        lang = self.lang(prompts, completions, references)
        out = []
        for ok, c, r in zip(lang, completions, references):
            c, r = c.strip(), r.strip()
            out.append(ok + 1.0 - abs(len(c) - len(r)) / max(len(c), len(r), 1))
        return out


# The GPU size of the benchmark: Qwen3-0.6B's shape (config of Qwen/Qwen3-0.6B) with random weights.
QWEN3_06B_SHAPE = dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                       rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)


def build_random_qwen3_06b(out_dir: str | Path, *, seed: int = 0) -> Path:
    """Save a randomly initialised bf16 Qwen3-0.6B-shaped model to `out_dir` (once) and return the folder.

    It keeps the demo tokenizer (764 tokens): ids beyond it decode to nothing, which is fine for timing.
    """
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file():
        return out_dir
    torch.manual_seed(seed)
    cfg = Qwen3Config(**QWEN3_06B_SHAPE, bos_token_id=None, eos_token_id=0, pad_token_id=0)
    Qwen3ForCausalLM(cfg).to(torch.bfloat16).save_pretrained(out_dir)
    return out_dir


def load_cfg(out_dir: str, steps: int, extra: list[str] = ()):
    """configs/demo.yaml without the SFT stage, the benchmark reward only, `steps` GRPO steps, then `extra`."""
    from semgrpo.config import load_config

    return load_config(ROOT / "configs" / "demo.yaml", [
        f"output_dir={out_dir}", "sft.before_grpo=false", "reward.functions=[language]", "reward.tau=0.0",
        f"grpo.max_steps={steps}", f"run.deepspeed={ROOT / 'ds_configs' / 'zero3.json'}",
        "run.sample_every=0", f"run.save_every={steps}", *extra,
    ])


def model_shape(cfg) -> str:
    """A short name of the policy's size for the CSV `shape` column."""
    c = json.loads((Path(cfg.model.path) / "config.json").read_text(encoding="utf-8"))
    return (f"{c.get('model_type')}-h{c.get('hidden_size')}-L{c.get('num_hidden_layers')}-V{c.get('vocab_size')}"
            f"-{cfg.model.dtype} B{PROMPTS_PER_STEP}xG{cfg.grpo.group_size} C{cfg.grpo.max_completion_length}"
            f" lora{cfg.model.lora.r}")


def run_semgrpo(steps: int, seed: int, overrides: list[str] = ()) -> tuple[list[dict], str]:
    import torch

    from semgrpo.session import init_distributed
    from semgrpo.train import build_grpo_run, grpo_step

    init_distributed()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_cfg(tmp, steps, overrides)
        run, order, _ = build_grpo_run(cfg)
        if order.prompts_per_step != PROMPTS_PER_STEP:
            raise RuntimeError(f"ds_configs/zero3.json gives {order.prompts_per_step} prompts per step, "
                               f"expected {PROMPTS_PER_STEP}")
        reward = BenchReward(cfg.reward.script or run.setup.task.target_script)
        run.rewards = {"bench": reward}
        opt_seconds = [0.0]
        engine_step = run.engine.step

        def timed_step(*args, **kwargs):
            t0 = time.perf_counter()
            out = engine_step(*args, **kwargs)
            opt_seconds[0] += time.perf_counter() - t0
            return out

        run.engine.step = timed_step
        torch.manual_seed(seed * 1000 + 1)
        records, last = [], time.perf_counter()
        for step in range(steps):
            ids = order.indices(step, rank=0, world_size=1)
            opt_seconds[0] = 0.0
            metrics, _ = grpo_step(run, lambda: [run.setup.train[i] for i in ids])
            now = time.perf_counter()
            n = PROMPTS_PER_STEP * cfg.grpo.group_size
            rec = {p: metrics.get(f"perf/{p}_seconds", 0.0) for p in PHASES if p != "optimizer"}
            rec["optimizer"] = opt_seconds[0]
            rec["policy"] -= opt_seconds[0]
            rec.update(step=now - last, samples=n, tokens=metrics["completion/mean_length"] * n)
            records.append(rec)
            last = now
        shape = model_shape(cfg)
    return records, shape


def run_trl(steps: int, seed: int, overrides: list[str] = ()) -> tuple[list[dict], str]:
    import torch
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback

    from semgrpo.data import build_examples, load_records
    from semgrpo.ds_config import load_ds_config
    from semgrpo.modeling import load_tokenizer, resolve_dtype
    from semgrpo.prompts import get_task
    from semgrpo.session import apply_demo

    with tempfile.TemporaryDirectory() as tmp:
        # Our overrides apply here too (grpo.* and the DeepSpeed JSON's micro batch and accumulation), so
        # both trainers do the same work; the JSON's ZeRO settings have no TRL counterpart (no DeepSpeed).
        cfg = load_cfg(tmp, steps, overrides)
        apply_demo(cfg)
        dtype = resolve_dtype(cfg.model.dtype)
        _, plan = load_ds_config(cfg.run.deepspeed, dtype=dtype, world_size=1)
        if plan.per_rank != PROMPTS_PER_STEP * cfg.grpo.group_size:
            raise RuntimeError(f"{cfg.run.deepspeed} gives {plan.per_rank} completions per step, expected "
                               f"{PROMPTS_PER_STEP * cfg.grpo.group_size}")
        task = get_task(cfg.data.task)
        tok = load_tokenizer(cfg.model)
        train = build_examples(load_records(cfg.data.train, task=task, split="train"), task=task, tokenizer=tok,
                               max_prompt_length=cfg.data.max_prompt_length,
                               max_sample_tokens=cfg.data.max_sample_tokens, source=cfg.data.train)
        if tok(train[0].prompt)["input_ids"] != train[0].prompt_ids:
            raise RuntimeError("TRL would tokenize the rendered prompt differently from semgrpo")
        reward = BenchReward(cfg.reward.script or task.target_script)
        g = cfg.grpo
        lora = cfg.model.lora
        args = trl.GRPOConfig(
            output_dir=tmp, per_device_train_batch_size=plan.micro_batch, gradient_accumulation_steps=plan.grad_accum,
            num_generations=g.group_size, max_completion_length=g.max_completion_length,
            learning_rate=cfg.grpo.lr, lr_scheduler_type="constant", weight_decay=cfg.run.weight_decay,
            max_grad_norm=1.0, beta=g.beta, epsilon=g.eps_low, epsilon_high=g.eps_high, temperature=g.temperature,
            top_p=g.top_p, top_k=0, loss_type=g.loss_type, scale_rewards=g.scale_rewards,
            num_iterations=g.num_iterations, use_bias_correction_kl=False, use_vllm=False, report_to=[],
            use_cpu=not torch.cuda.is_available(), bf16=dtype == "bf16", fp16=dtype == "fp16", save_strategy="no",
            logging_steps=1, disable_tqdm=True, seed=seed, max_steps=steps,
            model_init_kwargs={"dtype": {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype, torch.float32)},
        )
        peft_cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                              target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
        data = Dataset.from_dict({"prompt": [ex.prompt for ex in train], "reference": [ex.reference for ex in train]})
        trainer = trl.GRPOTrainer(model=cfg.model.path, reward_funcs=[reward], args=args, train_dataset=data,
                                  processing_class=tok, peft_config=peft_cfg)
        records, cur = [], {}
        state = {"in_gs": False, "ts_end": None, "last_end": None}

        def add(key, dt):
            cur[key] = cur.get(key, 0.0) + dt

        def timed(name, key_fn):
            fn = getattr(trainer, name)

            def wrapper(*a, **k):
                t0 = time.perf_counter()
                out = fn(*a, **k)
                key = key_fn()
                if key:
                    add(key, time.perf_counter() - t0)
                return out

            setattr(trainer, name, wrapper)

        timed("_generate", lambda: "generation")
        timed("_calculate_rewards", lambda: "reward")
        timed("_get_per_token_logps_and_entropies", lambda: "logprobs" if state["in_gs"] else None)
        gs, ts = trainer._generate_and_score_completions, trainer.training_step

        def gen_and_score(*a, **k):
            state["in_gs"], t0 = True, time.perf_counter()
            try:
                out = gs(*a, **k)
            finally:
                state["in_gs"] = False
            add("gs", time.perf_counter() - t0)
            cur["tokens"] = cur.get("tokens", 0) + int(out["completion_mask"].sum())
            cur["samples"] = cur.get("samples", 0) + int(out["completion_mask"].shape[0])
            return out

        def training_step(*a, **k):
            t0 = time.perf_counter()
            out = ts(*a, **k)
            state["ts_end"] = time.perf_counter()
            add("ts", state["ts_end"] - t0)
            return out

        trainer._generate_and_score_completions, trainer.training_step = gen_and_score, training_step

        class Clock(TrainerCallback):
            def on_train_begin(self, *_, **__):
                state["last_end"] = time.perf_counter()

            def on_optimizer_step(self, *_, **__):
                add("optimizer", time.perf_counter() - state["ts_end"])

            def on_step_end(self, *_, **__):
                now = time.perf_counter()
                rec = {p: cur.get(p, 0.0) for p in PHASES}
                rec["policy"] = cur.get("ts", 0.0) - cur.get("gs", 0.0)
                rec.update(step=now - state["last_end"], samples=cur.get("samples", 0),
                           tokens=cur.get("tokens", 0), gs_other=cur.get("gs", 0.0) - rec["generation"]
                           - rec["reward"] - rec["logprobs"])
                records.append(rec)
                cur.clear()
                state["last_end"] = now

        trainer.add_callback(Clock())
        torch.manual_seed(seed * 1000 + 1)
        trainer.train()
        shape = model_shape(cfg)
    return records, shape


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--provider", choices=PROVIDERS, required=True)
    ap.add_argument("--steps", type=int, required=True, help="measured steps")
    ap.add_argument("--warmup", type=int, default=1, help="steps run first and not reported")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="JSON file for the per-step records")
    ap.add_argument("--override", action="append", default=[],
                    help="semgrpo config key=value applied after the benchmark's own (experiments only)")
    a = ap.parse_args(argv)
    if a.steps < 1 or a.warmup < 0:
        ap.error(f"--steps must be >= 1 and --warmup >= 0, got {a.steps} and {a.warmup}")
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    runner = run_semgrpo if a.provider == "semgrpo" else run_trl
    records, shape = runner(a.warmup + a.steps, a.seed, a.override)
    result = {
        "provider": a.provider, "shape": shape, "records": records[a.warmup:], "warmup": a.warmup,
        "overrides": a.override,
        "wall_seconds": time.perf_counter() - t0, "threads": torch.get_num_threads(),
        # Linux reports ru_maxrss in KiB: the peak resident set of this whole process.
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
    }
    Path(a.out).write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    from semgrpo.errors import run_entry_point

    sys.exit(run_entry_point("train_runners.py", main))  # leaves the process group on every way out
