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

from semgrpo import dist, run_folder
from semgrpo.adapter_merge import merged_adapter
from semgrpo.batching import LOSS_STATS, BatchPlan, LossNormalizer, PromptOrder, check_group_fit
from semgrpo.checkpoint import clean_stale_tmp, load_checkpoint, save_checkpoint
from semgrpo.collectives import gather_cat, sum_across
from semgrpo.config import Config, ConfigError, GRPOConfig, to_dict
from semgrpo.data import Example
from semgrpo.interrupt import GracefulInterrupt
from semgrpo.modeling import build_engine, load_policy, load_reward_encoder
from semgrpo.ops import group_advantages, grpo_loss, token_logprobs, zero_std_groups
from semgrpo.rewards import build_reward_functions, score
from semgrpo.rollout import Rollout, completion_logits, generate, generation_model, needs_synced_generation
from semgrpo.session import RunSetup, eos_ids, init_distributed, prepare, seed_everything
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

        # 4. Advantages over the global batch: every rank's rewards are gathered first, as TRL does, so that
        #    scale_rewards="batch" divides by the global std at any world size.
        n, rank = len(group), dist.rank()
        lengths = rollout.completion_mask.sum(1).float()
        gathered_rl = gather_cat(torch.stack([rewards.float(), lengths.to(rewards.device)], dim=1)).cpu()
        all_rewards, all_lengths = gathered_rl[:, 0], gathered_rl[:, 1]
        all_advantages, group_std = group_advantages(all_rewards, g.group_size, scale=g.scale_rewards,
                                                     eps=1e-4, return_group_std=True)
        advantages = all_advantages[rank * n:(rank + 1) * n].to(engine.device)
        # Which completions the loss covers. A zero-variance group has advantage 0: with beta == 0 it adds no
        # gradient and is skipped (it would only dilute the others); with beta > 0 its KL still pulls, so
        # every completion stays in, as in TRL.
        informative = ~zero_std_groups(all_rewards, g.group_size)
        in_loss = informative.repeat_interleave(g.group_size)
        if g.beta > 0:
            in_loss = torch.ones_like(in_loss)
        norm = LossNormalizer(g.loss_type, sequences=int(in_loss.sum()), tokens=float(all_lengths[in_loss].sum()),
                              ranks_times_accumulation=run.plan.world_size * run.plan.grad_accum)
        my_lengths = all_lengths[rank * n:(rank + 1) * n]
        keep = in_loss[rank * n:(rank + 1) * n].nonzero().flatten()
        micro_batches = [torch.as_tensor(c, dtype=torch.long) for c in np.array_split(keep.numpy(), run.plan.grad_accum)]

        # 5. Old log-probs (only when mu > 1) and reference log-probs (only when beta > 0), no grad.
        old_logps = _logps_per_micro_batch(model, g, rollout, micro_batches) if g.num_iterations > 1 else None
        ref_logps = (_logps_per_micro_batch(model, g, rollout, micro_batches, reference=True)
                     if g.beta > 0 else None)
        timer.lap("logprobs")

        # 6. Policy forward/backward in micro-batches through the fused loss; optimizer step at the
        #    accumulation boundary. Each micro-batch's loss is weighted by its share of the global batch's loss
        #    (LossNormalizer), so the update does not depend on how the batch was cut. Ranks run the same number
        #    of micro-batches (ZeRO-3 collectives), so an empty one is a zero-weighted dummy; with nothing to
        #    learn anywhere the optimizer still steps, as TRL's does, so the LR schedule stays in place.
        if not g.gathered_policy_pass:
            gathered.close()
        totals = {name: torch.zeros((), dtype=torch.float64, device=engine.device) for name in LOSS_STATS}
        for _ in range(g.num_iterations):
            for i, rows in enumerate(micro_batches):
                empty = len(rows) == 0
                rows = rows if not empty else torch.tensor([0])
                share = 0.0 if empty else norm.share(rows=len(rows), tokens=float(my_lengths[rows].sum()))
                mb = rollout.select(rows)
                engine.module.train()  # every policy pass trains (dropout, checkpointing), whatever closing the gather restored
                logits = completion_logits(engine, mb)
                loss, stats = grpo_loss(
                    logits, mb.completion_ids, mb.completion_mask, advantages[rows.to(advantages.device)],
                    old_logps=None if old_logps is None else old_logps[i],
                    ref_logps=None if ref_logps is None else ref_logps[i],
                    temperature=g.temperature, eps_low=g.eps_low, eps_high=g.eps_high, beta=g.beta,
                    loss_type=g.loss_type, max_completion_length=g.max_completion_length,
                    num_items_in_batch=norm.tokens or None)
                engine.backward(loss * (share * norm.ranks_times_accumulation))
                if engine.is_gradient_accumulation_boundary():
                    gathered.close()  # partition again before the optimizer writes the new weights
                engine.step()
                totals["loss"] += loss.detach().double() * share
                for name in LOSS_STATS[1:]:  # token-weighted over the global batch
                    totals[name] += stats[name].double() * (0.0 if empty else float(my_lengths[rows].sum()))
        timer.lap("policy")

    # 7. Metrics over all ranks.
    reduced = sum_across(torch.stack(list(totals.values())).cpu())
    loss_stats = {name: float(v) / g.num_iterations / (1.0 if name == "loss" else max(norm.tokens, 1.0))
                  for name, v in zip(LOSS_STATS, reduced.tolist())}
    metrics = {
        "reward/mean": _nanmean(all_rewards), "reward/std": _nanstd(all_rewards),
        **{f"reward/{name}": _nanmean(gather_cat(v)) for name, v in per_fn.items()},
        "reward/frac_zero_std_groups": (~informative).float().mean().item(),
        "reward/group_std_mean": _nanmean(group_std.float()),
        "loss": loss_stats["loss"], "kl": loss_stats["kl"], "clip_ratio/low": loss_stats["clip_ratio_low"],
        "clip_ratio/high": loss_stats["clip_ratio_high"], "clip_ratio/region": loss_stats["clip_ratio_region"],
        "completion/mean_length": all_lengths.mean().item(), "completion/max_length": all_lengths.max().item(),
        "completion/trained_fraction": norm.sequences / len(all_rewards),
        "lr": engine.get_lr()[0],
        **{f"perf/{k}_seconds": v for k, v in timer.seconds.items()},
    }
    step_seconds = sum(timer.seconds.values())
    metrics["perf/step_seconds"] = step_seconds
    metrics["perf/tokens_per_second"] = all_lengths.sum().item() / max(step_seconds, 1e-9)
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
    return run, order, total_steps


def train_grpo(cfg: Config) -> dict:
    """Run stage 2 to the end (resuming when asked); returns the summary written to summary.json."""
    init_distributed()
    folder = run_folder.plan(cfg, stage="grpo")  # every output_dir/resume check; writes nothing
    resume_from = folder.resume_from
    run, order, total_steps = build_grpo_run(cfg)
    folder.start(cfg)  # lock output_dir, clear an overwritten run, record the config of a fresh one
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
    clean_stale_tmp(cfg.output_dir)  # .tmp-* of saves cut short (a second Ctrl-C, a kill); the lock is held
    with GracefulInterrupt() as interrupt:  # Ctrl-C: finish the step, save, exit 130
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
            stop = step + 1 < total_steps and interrupt.should_stop()  # collective: every rank, every step
            if stop or (step + 1) % cfg.train.save_every == 0 or step + 1 == total_steps:
                saved = save_checkpoint(run.engine, cfg.output_dir, step=step + 1, keep_last=cfg.train.keep_last,
                                        client_state={"step": step + 1, "tau": state["tau"]}, config=to_dict(cfg))
            if stop:
                tracker.close()
                interrupt.exit(step + 1, saved)
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
