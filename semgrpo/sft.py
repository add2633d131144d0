"""Stage 1: supervised fine-tuning (cold start, or the Strong SFT baseline) on the same engine setup.

Cold start = the first `sft.samples` training records for `sft.epochs` epochs (paper: 5k, 2 epochs);
`sft.samples: 0` = all records (Strong SFT: 3 epochs). The run's checkpoints hold a PEFT adapter that
`train_grpo.py` starts from with `model.init_from=<this output_dir>`.
"""
from __future__ import annotations

import numpy as np
import torch

from semgrpo import dist, run_folder
from semgrpo.batching import PromptOrder
from semgrpo.checkpoint import clean_stale_tmp, load_checkpoint, save_checkpoint
from semgrpo.config import Config, to_dict
from semgrpo.data import collate_sft, sft_tensors
from semgrpo.dist import sum_across
from semgrpo.interrupt import GracefulInterrupt
from semgrpo.memory_plan import announce_plan
from semgrpo.modeling import build_engine, load_policy
from semgrpo.session import init_distributed, prepare, seed_everything
from semgrpo.tracking import RunTracker, check_trackers


def train_sft(cfg: Config) -> dict:
    """Run SFT to the end (resuming when asked); returns the summary written to summary.json."""
    init_distributed()
    check_trackers(cfg.run.report_to)  # a missing wandb is a ConfigError before anything loads
    folder = run_folder.plan(cfg, stage="sft")  # every output_dir/resume check; writes nothing
    resume_from = folder.resume_from
    setup = prepare(cfg, need_encoder=False)
    tok, plan = setup.tokenizer, setup.plan
    examples = setup.train[: cfg.sft.samples] if cfg.sft.samples > 0 else setup.train
    features = [sft_tensors(ex, eos_token_id=tok.eos_token_id, max_length=cfg.sft.max_length) for ex in examples]
    # A prompt that fills sft.max_length leaves no target token (and a NaN loss): drop it, say so.
    trainable = [f for f in features if any(label != -100 for label in f["labels"])]
    if len(trainable) < len(features) and dist.is_main():
        print(f"semgrpo: sft: dropped {len(features) - len(trainable)} samples whose prompt fills sft.max_length")
    features = trainable
    order = PromptOrder(len(features), prompts_per_step=plan.global_batch, seed=cfg.seed)
    total_steps = order.total_steps(epochs=cfg.sft.epochs, max_steps=-1)

    announce_plan(cfg, world_size=plan.world_size, ds_config=setup.ds_config, dtype=setup.dtype, stage="sft")
    seed_everything(cfg.seed)
    policy = load_policy(cfg.model, dtype=setup.dtype, ds_config=setup.ds_config)
    engine = build_engine(policy, setup.ds_config, lr=cfg.sft.lr, weight_decay=cfg.run.weight_decay,
                          scheduler=cfg.sft.scheduler, warmup_ratio=cfg.sft.warmup_ratio, total_updates=total_steps)
    folder.start(cfg)  # lock output_dir, clear an overwritten run, record the config of a fresh one
    start = load_checkpoint(engine, resume_from)["step"] if resume_from is not None else 0
    if resume_from is None:
        torch.manual_seed(cfg.seed * 1000 + dist.rank() + 1)
    tracker = RunTracker(cfg.output_dir, enabled=dist.is_main(), total_steps=total_steps, start_step=start,
                         desc="sft", report_to=cfg.run.report_to, config=to_dict(cfg))
    engine.train()
    clean_stale_tmp(cfg.output_dir)  # .tmp-* of saves cut short (a second Ctrl-C, a kill); the lock is held
    # Ctrl-C: finish the step, save, exit 130. An error closes the tracker first (its progress bar).
    with GracefulInterrupt() as interrupt, tracker.closed_on_error():
        for step in range(start, total_steps):
            rows = order.indices(step, rank=dist.rank(), world_size=dist.world_size())
            loss_sum, tokens = 0.0, 0
            for chunk in np.array_split(np.asarray(rows), plan.grad_accum):
                batch = collate_sft([features[i] for i in chunk], pad_token_id=tok.pad_token_id)
                batch = {k: v.to(engine.device) for k, v in batch.items()}
                loss = engine(**batch).loss
                engine.backward(loss)
                engine.step()
                n = int((batch["labels"][:, 1:] != -100).sum())
                loss_sum, tokens = loss_sum + loss.item() * n, tokens + n
            totals = sum_across(torch.tensor([loss_sum, float(tokens)], dtype=torch.float64))
            tracker.log(step + 1, {"sft/loss": float(totals[0] / totals[1].clamp(min=1)), "lr": engine.get_lr()[0]})
            stop = step + 1 < total_steps and interrupt.should_stop()  # collective: every rank, every step
            if stop or (step + 1) % cfg.run.save_every == 0 or step + 1 == total_steps:
                saved = save_checkpoint(engine, cfg.output_dir, step=step + 1, keep_last=cfg.run.keep_last,
                                        client_state={"step": step + 1}, config=to_dict(cfg))
            if stop:
                tracker.close()
                interrupt.exit(step + 1, saved)
    summary = tracker.summary(stage="sft", samples=len(features), epochs=cfg.sft.epochs)
    tracker.close()
    return summary
