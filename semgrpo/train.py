"""Stage 2: GRPO with semantic rewards under DeepSpeed ZeRO-3.

`grpo_step` is one step, top to bottom: (1) each prompt G times, (2) sampled under gathered weights,
(3) decoded and scored, (4) advantages per group over the global batch, (5) old and reference log-probs when
needed, (6) the policy's forward/backward per micro-batch and the optimizer step, (7) metrics over all ranks.
`train_grpo` builds the run (session.py), measures tau, and loops over steps with logging and atomic
checkpoints.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from semgrpo import dist, run_folder
from semgrpo.batching import (
    LOSS_STATS,
    BatchPlan,
    GlobalBatch,
    PromptOrder,
    PromptStream,
    ScoredGroups,
    keep_informative,
    loss_options,
    needs_another_round,
    plan_global_batch,
)
from semgrpo.checkpoint import clean_stale_tmp, load_checkpoint, save_checkpoint
from semgrpo.config import Config, ConfigError, GRPOConfig, to_dict
from semgrpo.data import Example
from semgrpo.dist import gather_cat, sum_across
from semgrpo.ds_config import check_group_fit
from semgrpo.eval.tax_meter import TaxMeter
from semgrpo.fused_head import check_fusable, completion_logprobs
from semgrpo.interrupt import GracefulInterrupt
from semgrpo.memory_plan import announce_plan
from semgrpo.modeling import build_engine, build_reference, load_policy, load_reward_encoder
from semgrpo.ops import policy_loss_from_logps
from semgrpo.rewards import build_reward_functions, score_on_every_rank
from semgrpo.rollout import (
    GatheredWeights,
    Rollout,
    generate,
    merged_adapter,
    needs_synced_generation,
)
from semgrpo.session import RunSetup, eos_ids, init_distributed, prepare, seed_everything
from semgrpo.tau import measure_tau
from semgrpo.tracking import RunTracker, check_trackers


@dataclass
class GRPORun:
    """What every step needs, built once."""

    cfg: Config
    setup: RunSetup
    engine: object
    rewards: dict
    eos: list[int]
    tax_meter: TaxMeter | None = None
    reference: object | None = None  # full-parameter runs with beta > 0: the frozen starting policy

    @property
    def grpo(self) -> GRPOConfig:
        return self.cfg.grpo

    @property
    def plan(self) -> BatchPlan:
        return self.setup.plan

    @property
    def prompts_per_step(self) -> int:
        """Prompts in one batch of the order, over all ranks."""
        return self.plan.global_batch // self.grpo.group_size


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


def grpo_step(run: GRPORun, draw: Callable[[], list[Example]]) -> tuple[dict[str, float], list[dict]]:
    """One GRPO step on this rank's prompts (`draw()` gives the next batch of them); returns globally reduced
    metrics and a few samples."""
    grpo, engine, timer = run.grpo, run.engine, PhaseTimer()

    # 1-3. Every prompt G times, sampled, decoded and scored (_sample_and_score). Under ZeRO-3 the parameters are
    #    gathered once here and stay gathered, hooks off, through steps 1-5 and (grpo.gathered_policy_pass) the
    #    first policy pass of step 6: one gather per step, not one per forward. They are released before the
    #    optimizer writes the new weights. With grpo.dynamic_sampling, further batches of prompts are sampled
    #    until every rank holds its full number of groups whose rewards differ (or the rounds run out).
    with GatheredWeights(engine, gather=grpo.gather_for_generation) as weights:
        with merged_adapter(weights.model, enabled=grpo.merge_adapter_for_generation) as sampler:
            rounds = [_sample_and_score(run, sampler, draw(), timer)]
            while grpo.dynamic_sampling and needs_another_round(rounds, group_size=grpo.group_size,
                                                                 max_resample=grpo.max_resample):
                rounds.append(_sample_and_score(run, sampler, draw(), timer))
        scored = keep_informative(rounds, group_size=grpo.group_size, pad_id=run.setup.tokenizer.pad_token_id)
        rollout, rewards = scored.rollout, scored.rewards

        # 4. Advantages over the global batch, the completions the loss covers, and their micro-batches. With
        #    grpo.mask_truncated_completions a completion cut off at the length limit keeps its advantage's place
        #    but has no token in the loss.
        truncated = rollout.truncated(run.eos) if grpo.mask_truncated_completions else None
        step = plan_global_batch(rewards, rollout.completion_mask.sum(1).float(), grpo, run.plan, truncated=truncated)
        rollout = rollout.masking(truncated)
        advantages = step.advantages.to(engine.device)

        # 5. Old log-probs (only when mu > 1) and reference log-probs (only when beta > 0), no grad.
        old_logps = (_logps_per_micro_batch(weights.model, contextlib.nullcontext(), grpo, rollout, step.micro_batches)
                     if grpo.num_iterations > 1 else None)
        ref_logps = (_logps_per_micro_batch(*_reference_policy(run, weights.model), grpo, rollout, step.micro_batches)
                     if grpo.beta > 0 else None)
        timer.lap("logprobs")

        # 6. Policy forward/backward per micro-batch, each loss weighted by its share of the global batch's loss
        #    (LossNormalizer), so the update does not depend on how the batch was cut. The LM head is fused into
        #    the log-prob op (fused_head): no [micro-batch, C, V] logits exist in any pass.
        #    Ranks run the same number of micro-batches (ZeRO-3 collectives): an empty one is a zero-weighted
        #    dummy. With nothing to learn the optimizer still steps, as TRL's does (the LR schedule keeps pace).
        if not grpo.gathered_policy_pass:
            weights.release()
        totals = {name: torch.zeros((), dtype=torch.float64, device=engine.device) for name in LOSS_STATS}
        options = loss_options(grpo)
        for _ in range(grpo.num_iterations):
            for i, rows in enumerate(step.micro_batches):
                tokens = float(step.my_loss_tokens[rows].sum())
                share = step.norm.share(rows=len(rows), tokens=tokens) if len(rows) else 0.0
                rows = rows if len(rows) else torch.tensor([0])
                mb = rollout.select(rows)
                engine.module.train()  # every policy pass trains (dropout, checkpointing), whatever was restored
                logp, entropy = completion_logprobs(engine, mb, temperature=grpo.temperature, with_entropy=True)
                loss, stats = policy_loss_from_logps(
                    logp, mb.completion_mask, advantages[rows.to(advantages.device)],
                    old_logps=None if old_logps is None else old_logps[i],
                    ref_logps=None if ref_logps is None else ref_logps[i],
                    num_items_in_batch=step.norm.num_items_in_batch, entropy=entropy, options=options)
                engine.backward(loss * (share * step.norm.ranks_times_accumulation))
                if engine.is_gradient_accumulation_boundary():
                    weights.release()  # the optimizer writes partitioned weights
                engine.step()
                totals["loss"] += loss.detach().double() * share
                for name in LOSS_STATS[1:]:  # token-weighted over the global batch
                    totals[name] += stats[name].double() * tokens
        timer.lap("policy")

    # 7. Metrics over all ranks.
    metrics = _step_metrics(engine, grpo, step, scored.per_fn, totals, timer)
    if grpo.mask_truncated_completions:
        metrics["completion/masked_truncated_fraction"] = step.all_truncated.float().mean().item()
    if grpo.dynamic_sampling:
        metrics.update({"sampling/rounds": len(rounds), "sampling/prompts_drawn": len(rounds) * run.prompts_per_step,
                        "sampling/informative_fraction": step.informative.float().mean().item()})
    first = scored.examples[0]  # its group is the first G rows
    samples = [{"prompt": first.prompt, "completion": c, "reference": first.reference, "reward": float(r)}
               for c, r in zip(scored.completions[: grpo.group_size], rewards[: grpo.group_size].tolist())]
    return metrics, samples


def _sample_and_score(run: GRPORun, sampler, batch: list[Example], timer: PhaseTimer) -> ScoredGroups:
    """Steps 1-3 of a GRPO step: every prompt of `batch` G times (groups contiguous), sampled, decoded and
    scored with the weighted sum of the reward components (None -> NaN)."""
    grpo, tok = run.grpo, run.setup.tokenizer
    group = [ex for ex in batch for _ in range(grpo.group_size)]
    rollout = generate(sampler, [ex.prompt_ids for ex in group], device=run.engine.device, pad_id=tok.pad_token_id,
                       eos_ids=run.eos, max_new_tokens=grpo.max_completion_length, temperature=grpo.temperature,
                       top_p=grpo.top_p, batch_size=grpo.generation_batch_size,
                       synced_gpus=needs_synced_generation(run.engine, gather=grpo.gather_for_generation))
    timer.lap("generation")
    completions = tok.batch_decode(rollout.completion_ids, skip_special_tokens=True)
    rewards, per_fn = score_on_every_rank(run.rewards, run.cfg.reward.weights, [ex.prompt for ex in group],
                                          completions, [ex.reference for ex in group], device=run.engine.device)
    timer.lap("reward")
    return ScoredGroups(list(batch), rollout, completions, rewards, per_fn)


def _step_metrics(engine, grpo: GRPOConfig, step: GlobalBatch, per_fn: dict, totals: dict, timer) -> dict:
    """The step's scalars, reduced over every rank (loss statistics token-weighted over the global batch)."""
    reduced = sum_across(torch.stack(list(totals.values())).cpu()).tolist()
    loss_stats = {name: v / grpo.num_iterations / (1.0 if name == "loss" else max(step.norm.tokens, 1.0))
                  for name, v in zip(LOSS_STATS, reduced)}
    lengths = step.all_lengths
    step_seconds = sum(timer.seconds.values())
    return {
        "reward/mean": _nanmean(step.all_rewards), "reward/std": _nanstd(step.all_rewards),
        **{f"reward/{name}": _nanmean(gather_cat(v)) for name, v in per_fn.items()},
        "reward/frac_zero_std_groups": (~step.informative).float().mean().item(),
        "reward/group_std_mean": _nanmean(step.group_std.float()),
        "loss": loss_stats["loss"], "kl": loss_stats["kl"], "clip_ratio/low": loss_stats["clip_ratio_low"],
        "clip_ratio/high": loss_stats["clip_ratio_high"], "clip_ratio/region": loss_stats["clip_ratio_region"],
        "entropy/mean": loss_stats["entropy"],
        "completion/mean_length": lengths.mean().item(), "completion/max_length": lengths.max().item(),
        "completion/trained_fraction": step.norm.sequences / len(step.all_rewards),
        "lr": engine.get_lr()[0],
        **{f"perf/{k}_seconds": v for k, v in timer.seconds.items()},
        "perf/step_seconds": step_seconds,
        "perf/tokens_per_second": lengths.sum().item() / max(step_seconds, 1e-9),
    }


def _reference_policy(run: GRPORun, policy):
    """The frozen starting policy and the context to call it in: the separate reference of a full-parameter
    run, or the LoRA policy with its adapter disabled (the cold start's weights are merged into its base)."""
    if run.reference is not None:
        return run.reference, contextlib.nullcontext()
    return policy, policy.disable_adapter()


@torch.no_grad()
def _logps_per_micro_batch(model, context, grpo: GRPOConfig, rollout: Rollout, micro_batches):
    """Per-token log-probs of the completions under `model`, called inside `context`."""
    out = []
    with context:
        for rows in micro_batches:
            mb = rollout.select(rows if len(rows) else torch.tensor([0]))
            out.append(completion_logprobs(model, mb, temperature=grpo.temperature)[0])
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
    prompts_per_rank = check_group_fit(setup.plan, cfg.grpo.group_size, cfg.run.deepspeed)
    tax_meter = TaxMeter(cfg, setup.tokenizer) if cfg.tax_meter.every_steps > 0 else None
    if (cfg.grpo.merge_adapter_for_generation and not cfg.grpo.gather_for_generation
            and setup.ds_config.get("zero_optimization", {}).get("stage", 0) == 3):
        raise ConfigError("grpo.merge_adapter_for_generation needs grpo.gather_for_generation under ZeRO-3 "
                          "(the weights to merge must be whole on each rank)")
    order = PromptOrder(len(setup.train), prompts_per_step=prompts_per_rank * setup.plan.world_size, seed=cfg.seed)
    total_steps = order.total_steps(epochs=cfg.grpo.epochs, max_steps=cfg.grpo.max_steps)
    announce_plan(cfg, world_size=setup.plan.world_size, ds_config=setup.ds_config, dtype=setup.dtype, stage="grpo")
    seed_everything(cfg.seed)
    policy = load_policy(cfg.model, dtype=setup.dtype, ds_config=setup.ds_config)
    check_fusable(policy)
    engine = build_engine(policy, setup.ds_config, lr=cfg.grpo.lr, weight_decay=cfg.run.weight_decay,
                          scheduler=cfg.grpo.scheduler, warmup_ratio=cfg.grpo.warmup_ratio,
                          total_updates=total_steps * cfg.grpo.num_iterations)
    reference = (build_reference(cfg.model, dtype=setup.dtype, ds_config=setup.ds_config, device=engine.device)
                 if cfg.grpo.beta > 0 and not cfg.model.lora.enabled else None)
    encoder = (load_reward_encoder(cfg.reward.encoder, device=engine.device)
               if "semantic" in cfg.reward.functions else None)
    script = cfg.reward.script or setup.task.target_script
    rewards = build_reward_functions(cfg.reward, encoder=encoder, script=script)
    run = GRPORun(cfg=cfg, setup=setup, engine=engine, rewards=rewards, eos=eos_ids(setup.tokenizer),
                  tax_meter=tax_meter, reference=reference)
    return run, order, total_steps


def train_grpo(cfg: Config) -> dict:
    """Run stage 2 to the end (resuming when asked); returns the summary written to summary.json."""
    init_distributed()
    check_trackers(cfg.run.report_to)  # a missing wandb is a ConfigError before anything loads
    folder = run_folder.plan(cfg, stage="grpo")  # every output_dir/resume check; writes nothing
    resume_from = folder.resume_from
    run, order, total_steps = build_grpo_run(cfg)
    folder.start(cfg)  # lock output_dir, clear an overwritten run, record the config of a fresh one
    state = {"step": 0, "tau": None}
    if resume_from is not None:
        state.update(load_checkpoint(run.engine, resume_from))
    # Batches of prompts drawn so far: the step count, unless dynamic sampling drew ahead (older checkpoints
    # lack the key and never drew ahead).
    prompts = PromptStream(order, run.setup.train, position=state.get("batches_drawn", state["step"]))
    semantic = run.rewards.get("semantic")
    if semantic is not None:
        if state["tau"] is None:
            state["tau"] = float(cfg.reward.tau) if cfg.reward.tau != "auto" else measure_tau(
                run.engine, run.setup.tokenizer, (run.setup.dev or run.setup.train)[:cfg.reward.tau_samples],
                semantic.similarity, eos_ids=run.eos, gather=cfg.grpo.gather_for_generation,
                max_new_tokens=cfg.grpo.max_completion_length, batch_size=cfg.grpo.generation_batch_size)
        semantic.tau = state["tau"]
    # Sampling differs per rank (different prompts anyway); restored exactly by checkpoints.
    if resume_from is None:
        torch.manual_seed(cfg.seed * 1000 + dist.rank() + 1)
    tracker = RunTracker(cfg.output_dir, enabled=dist.is_main(), total_steps=total_steps,
                         start_step=state["step"], desc="grpo", report_to=cfg.run.report_to, config=to_dict(cfg))
    if dist.is_main() and state["tau"] is not None:
        print(f"semgrpo: tau = {state['tau']:.4f}")
    clean_stale_tmp(cfg.output_dir)  # .tmp-* of saves cut short (a second Ctrl-C, a kill); the lock is held
    # Ctrl-C: finish the step, save, exit 130. An error closes the tracker first (its progress bar).
    with GracefulInterrupt() as interrupt, tracker.closed_on_error():
        for step in range(state["step"], total_steps):
            metrics, samples = grpo_step(run, prompts.next_batch)
            measure_tax = run.tax_meter is not None and (step + 1) % cfg.tax_meter.every_steps == 0
            if measure_tax:
                metrics.update(run.tax_meter.measure(run.engine))
            if measure_tax or (step + 1) % cfg.run.log_every == 0 or step + 1 == total_steps:
                tracker.log(step + 1, metrics)
            if cfg.run.sample_every and (step + 1) % cfg.run.sample_every == 0:
                tracker.log_samples(step + 1, samples)
            stop = step + 1 < total_steps and interrupt.should_stop()  # collective: every rank, every step
            if stop or (step + 1) % cfg.run.save_every == 0 or step + 1 == total_steps:
                saved = save_checkpoint(run.engine, cfg.output_dir, step=step + 1, keep_last=cfg.run.keep_last,
                                        client_state={"step": step + 1, "tau": state["tau"],
                                                      "batches_drawn": prompts.position}, config=to_dict(cfg))
            if stop:
                tracker.close()
                interrupt.exit(step + 1, saved)
    summary = tracker.summary(tau=state["tau"], total_steps=total_steps)
    if dist.is_main():
        tracker.plot_reward_curve()  # <output_dir>/reward_curve.png
    tracker.close()
    return summary
