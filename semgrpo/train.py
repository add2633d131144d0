"""Stage 2: GRPO with semantic rewards under DeepSpeed ZeRO-3.

`grpo_step` is one step, top to bottom, in the order of DESIGN section 4. `train_grpo` builds the run
(session.py), measures tau, and loops over steps with logging and atomic checkpoints.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import numpy as np
import torch

from semgrpo import dist
from semgrpo.adapter_merge import merged_adapter
from semgrpo.batching import BatchPlan, PromptOrder, check_group_fit
from semgrpo.checkpoint import load_checkpoint, resolve_resume, save_checkpoint
from semgrpo.collectives import gather_cat, sum_across
from semgrpo.config import Config, ConfigError, GRPOConfig
from semgrpo.data import Example
from semgrpo.modeling import build_engine, load_policy, load_reward_encoder
from semgrpo.ops import group_advantages, grpo_loss, token_logprobs, zero_std_groups
from semgrpo.rewards import build_reward_functions, score
from semgrpo.rollout import Rollout, completion_logits, generate, generation_model, needs_synced_generation
from semgrpo.session import RunSetup, eos_ids, init_distributed, prepare, save_resolved_config, seed_everything
from semgrpo.tau import measure_tau
from semgrpo.tax_meter import TaxMeter
from semgrpo.tracking import RunTracker, escape_markdown


@dataclass
class GRPORun:
    """What every step needs, built once."""

    cfg: Config
    setup: RunSetup
    engine: object
    rewards: dict
    eos: list[int]
    tax_meter: TaxMeter | None = None

    @property
    def g(self) -> GRPOConfig:
        return self.cfg.grpo

    @property
    def plan(self) -> BatchPlan:
        return self.setup.plan


class PhaseTimer:
    """Seconds per phase of a step (synchronising CUDA only at phase boundaries)."""

    def __init__(self):
        self.seconds, self._t = {}, time.perf_counter()

    def lap(self, name: str) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._t
        self._t = now


def grpo_step(run: GRPORun, batch: list[Example]) -> tuple[dict[str, float], list[dict]]:
    """One GRPO step on this rank's prompts; returns globally reduced metrics and a few samples."""
    g, engine, tok, timer = run.g, run.engine, run.setup.tokenizer, PhaseTimer()

    # 1. Every prompt G times, groups contiguous.
    group = [ex for ex in batch for _ in range(g.group_size)]

    # 2. Sample completions. Under ZeRO-3 the parameters are gathered once here and stay gathered, hooks
    #    off, through the no-grad passes of steps 3-5 and (grpo.gathered_policy_pass) the first policy
    #    pass of step 6: one gather per step, not one per forward. They are handed back to ZeRO before
    #    the optimizer updates them.
    gathered = contextlib.ExitStack()
    model = gathered.enter_context(generation_model(engine, gather=g.gather_for_generation))
    with gathered:
        with merged_adapter(model, enabled=g.merge_adapter_for_generation) as sampler:
            rollout = generate(sampler, [ex.prompt_ids for ex in group], device=engine.device,
                               pad_id=tok.pad_token_id, eos_ids=run.eos, max_new_tokens=g.max_completion_length,
                               temperature=g.temperature, top_p=g.top_p, batch_size=g.generation_batch_size,
                               synced_gpus=needs_synced_generation(engine, gather=g.gather_for_generation))
        timer.lap("generation")

        # 3. Decode and score: weighted sum of the reward components (None -> NaN).
        completions = tok.batch_decode(rollout.completion_ids, skip_special_tokens=True)
        references = [ex.reference for ex in group]
        rewards, per_fn = score(run.rewards, run.cfg.reward.weights, [ex.prompt for ex in group], completions,
                                references, device=engine.device)
        timer.lap("reward")

        # 4. Group-relative advantages; groups whose rewards are all equal carry no signal and are skipped.
        advantages, group_std = group_advantages(rewards, g.group_size, scale=g.scale_rewards,
                                                 eps=1e-4, return_group_std=True)
        informative = ~zero_std_groups(rewards, g.group_size)
        keep = informative.repeat_interleave(g.group_size).nonzero().flatten().cpu()
        micro_batches = [torch.as_tensor(c, dtype=torch.long)
                         for c in np.array_split(keep.numpy(), run.plan.grad_accum)]
        counts = sum_across(torch.tensor([len(keep), rollout.completion_mask[keep].sum().item()],
                                         dtype=torch.float64))
        kept_global, tokens_global = int(counts[0]), float(counts[1])

        # 5. Old log-probs (only when mu > 1) and reference log-probs (only when beta > 0), no grad.
        old_logps = _logps_per_micro_batch(model, g, rollout, micro_batches) if g.num_iterations > 1 else None
        ref_logps = (_logps_per_micro_batch(model, g, rollout, micro_batches, reference=True)
                     if g.beta > 0 else None)
        timer.lap("logprobs")

        # 6. Policy forward/backward in micro-batches through the fused loss; optimizer step at the
        #    accumulation boundary. Ranks run the same number of micro-batches (ZeRO-3 collectives), so an
        #    empty one is a zero-weighted dummy. Nothing to learn anywhere -> no update at all.
        if not g.gathered_policy_pass:
            gathered.close()
        engine.module.train()
        loss_stats = []
        if kept_global > 0:
            scale = run.plan.grad_accum * run.plan.world_size if g.loss_type == "dapo" else 1.0
            for _ in range(g.num_iterations):
                for i, rows in enumerate(micro_batches):
                    empty = len(rows) == 0
                    rows = rows if not empty else torch.tensor([0])
                    mb = rollout.select(rows)
                    logits = completion_logits(engine, mb)
                    loss, stats = grpo_loss(
                        logits, mb.completion_ids, mb.completion_mask, advantages[rows],
                        old_logps=None if old_logps is None else old_logps[i],
                        ref_logps=None if ref_logps is None else ref_logps[i],
                        temperature=g.temperature, eps_low=g.eps_low, eps_high=g.eps_high, beta=g.beta,
                        loss_type=g.loss_type, max_completion_length=g.max_completion_length,
                        num_items_in_batch=tokens_global)
                    engine.backward(loss * (0.0 if empty else scale))
                    if engine.is_gradient_accumulation_boundary():
                        gathered.close()  # partition again before the optimizer writes the new weights
                    engine.step()
                    if not empty:
                        loss_stats.append(torch.stack([loss.detach().float(), *(stats[k].float() for k in (
                            "kl", "clip_ratio_low", "clip_ratio_high", "clip_ratio_region"))]))
        timer.lap("policy")

    # 7. Metrics over all ranks.
    all_rewards = gather_cat(rewards)
    n_stats = torch.tensor(float(len(loss_stats)), dtype=torch.float64)
    stat_sum = torch.stack(loss_stats).sum(0).double() if loss_stats else torch.zeros(5, dtype=torch.float64)
    reduced = sum_across(torch.cat([stat_sum.cpu(), n_stats.view(1)]))
    means = (reduced[:5] / reduced[5].clamp(min=1)).tolist()
    lengths = gather_cat(rollout.completion_mask.sum(1).float())
    zero_std = gather_cat((~informative).float())
    metrics = {
        "reward/mean": _nanmean(all_rewards), "reward/std": _nanstd(all_rewards),
        **{f"reward/{name}": _nanmean(gather_cat(v)) for name, v in per_fn.items()},
        "reward/frac_zero_std_groups": zero_std.mean().item(),
        "reward/group_std_mean": _nanmean(gather_cat(group_std.float())),
        "loss": means[0], "kl": means[1], "clip_ratio/low": means[2], "clip_ratio/high": means[3],
        "clip_ratio/region": means[4],
        "completion/mean_length": lengths.mean().item(), "completion/max_length": lengths.max().item(),
        "completion/trained_fraction": kept_global / max(1, len(all_rewards)),
        "lr": engine.get_lr()[0],
        **{f"perf/{k}_seconds": v for k, v in timer.seconds.items()},
    }
    step_seconds = sum(timer.seconds.values())
    metrics["perf/step_seconds"] = step_seconds
    metrics["perf/tokens_per_second"] = lengths.sum().item() / max(step_seconds, 1e-9)
    samples = [{"prompt": ex.prompt, "completion": c, "reference": ex.reference, "reward": float(r)}
               for ex, c, r in zip(group[: g.group_size], completions, rewards.tolist())]
    return metrics, samples


@torch.no_grad()
def _logps_per_micro_batch(model, g: GRPOConfig, rollout: Rollout, micro_batches, *, reference: bool = False):
    """Per-token log-probs of the completions under the current (or, adapter disabled, reference) policy."""
    ctx = model.disable_adapter() if reference else contextlib.nullcontext()
    out = []
    with ctx:
        for rows in micro_batches:
            mb = rollout.select(rows if len(rows) else torch.tensor([0]))
            out.append(token_logprobs(completion_logits(model, mb), mb.completion_ids, temperature=g.temperature))
    return out


def _nanmean(t: torch.Tensor) -> float:
    t = t[~torch.isnan(t)]
    return t.mean().item() if t.numel() else float("nan")


def _nanstd(t: torch.Tensor) -> float:
    t = t[~torch.isnan(t)]
    return t.std().item() if t.numel() > 1 else 0.0


# ---------------------------------------------------------------------------------------------------


def build_grpo_run(cfg: Config) -> tuple[GRPORun, PromptOrder, int]:
    setup = prepare(cfg, need_encoder=True)
    prompts_per_rank = check_group_fit(setup.plan, cfg.grpo.group_size, cfg.train.deepspeed)
    tax_meter = TaxMeter(cfg, setup.tokenizer) if cfg.eval.every_steps > 0 else None
    if cfg.grpo.beta > 0 and not cfg.model.lora.enabled:
        raise ConfigError("grpo.beta > 0 needs model.lora.enabled: the reference is the policy with its adapter disabled")
    if (cfg.grpo.merge_adapter_for_generation and not cfg.grpo.gather_for_generation
            and setup.ds_config.get("zero_optimization", {}).get("stage", 0) == 3):
        raise ConfigError("grpo.merge_adapter_for_generation needs grpo.gather_for_generation under ZeRO-3 "
                          "(the weights to merge must be whole on each rank)")
    order = PromptOrder(len(setup.train), prompts_per_step=prompts_per_rank * setup.plan.world_size, seed=cfg.seed)
    total_steps = order.total_steps(epochs=cfg.train.epochs, max_steps=cfg.train.max_steps)
    seed_everything(cfg.seed)
    policy = load_policy(cfg.model, dtype=setup.dtype)
    engine = build_engine(policy, setup.ds_config, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                          scheduler=cfg.train.scheduler, warmup_ratio=cfg.train.warmup_ratio,
                          total_updates=total_steps * cfg.grpo.num_iterations)
    encoder = load_reward_encoder(cfg.reward.encoder, device=engine.device) if "semantic" in cfg.reward.functions else None
    script = cfg.reward.script or setup.task.target_script
    rewards = build_reward_functions(cfg.reward, encoder=encoder, script=script)
    run = GRPORun(cfg=cfg, setup=setup, engine=engine, rewards=rewards, eos=eos_ids(setup.tokenizer),
                  tax_meter=tax_meter)
    save_resolved_config(cfg)
    return run, order, total_steps


def train_grpo(cfg: Config) -> dict:
    """Run stage 2 to the end (resuming when asked); returns the summary written to summary.json."""
    init_distributed()
    resume_from = resolve_resume(cfg.resume, cfg.output_dir)
    run, order, total_steps = build_grpo_run(cfg)
    state = {"step": 0, "tau": None}
    if resume_from is not None:
        state.update(load_checkpoint(run.engine, resume_from))
    semantic = run.rewards.get("semantic")
    if semantic is not None:
        if state["tau"] is None:
            state["tau"] = measure_tau(run, cfg) if cfg.reward.tau == "auto" else float(cfg.reward.tau)
        semantic.tau = state["tau"]
    # Sampling differs per rank (different prompts anyway); restored exactly by checkpoints.
    if resume_from is None:
        torch.manual_seed(cfg.seed * 1000 + dist.rank() + 1)
    tracker = RunTracker(cfg.output_dir, enabled=dist.is_main(), total_steps=total_steps,
                         start_step=state["step"], desc="grpo")
    if dist.is_main() and state["tau"] is not None:
        print(f"semgrpo: tau = {state['tau']:.4f}")
    for step in range(state["step"], total_steps):
        ids = order.indices(step, rank=dist.rank(), world_size=dist.world_size())
        metrics, samples = grpo_step(run, [run.setup.train[i] for i in ids])
        measure_tax = run.tax_meter is not None and (step + 1) % cfg.eval.every_steps == 0
        if measure_tax:
            metrics.update(run.tax_meter.measure(run.engine))
        if measure_tax or (step + 1) % cfg.train.log_every == 0 or step + 1 == total_steps:
            tracker.log(step + 1, metrics)
        if cfg.train.sample_every and (step + 1) % cfg.train.sample_every == 0:
            tracker.log_text(step + 1, "samples", _samples_markdown(samples), escape=False)
        if (step + 1) % cfg.train.save_every == 0 or step + 1 == total_steps:
            save_checkpoint(run.engine, cfg.output_dir, step=step + 1, keep_last=cfg.train.keep_last,
                            client_state={"step": step + 1, "tau": state["tau"]})
    summary = tracker.summary(tau=state["tau"], total_steps=total_steps)
    if dist.is_main():
        tracker.plot_reward_curve(f"{cfg.output_dir}/reward_curve.png")
    tracker.close()
    return summary


def _samples_markdown(samples: list[dict]) -> str:
    """One group's completions as a Markdown table (TensorBoard renders text as Markdown)."""
    rows = ["| reward | completion | reference |", "|---|---|---|"]
    for s in samples:
        cells = (escape_markdown(s[k].replace("\n", " ")) for k in ("completion", "reference"))
        rows.append(f"| {s['reward']:.3f} | " + " | ".join(cells) + " |")
    return f"prompt: {escape_markdown(samples[0]['prompt'])}\n\n" + "\n".join(rows) if samples else ""
