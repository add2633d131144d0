"""Gradient-parity harness, run by test_grpo_parity.py as `deepspeed --num_gpus W tests/_grpo_parity.py OUT.json`.

Fixed completions and rewards go through the real `grpo_step` (generation and scoring are replaced by
deterministic fakes; everything after them is the trainer's own code under ZeRO-3). At each optimizer
boundary the full LoRA gradient DeepSpeed is about to apply is recorded with the weights it was taken at.
Rank 0 then recomputes that gradient with an independent fp32 reference: TRL 1.16's loss formulas written
out below, applied once to the *global* batch (every rank's completions together; informative groups only
when beta == 0, every completion when beta > 0), on a plain PEFT copy of the policy. One JSON row per
(GA, loss_type, scale_rewards, beta, num_iterations, iteration) holds the relative error and the train/eval
mode of every policy pass.
"""
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch

G = 4              # group size
PROMPTS = 4        # global prompts per step: 16 completions, split over 1 or 2 ranks
MAX_NEW = 6        # completion length cap
FLAT_GROUP = 1     # global group index whose rewards are all equal (zero variance)
SCALES = ("group", "batch", "none")  # an optional third argument picks a subset, e.g. "group"


def grid(scales=SCALES) -> list[tuple]:
    return list(itertools.product(("grpo", "bnpo", "dr_grpo", "dapo"), scales, (0.0, 0.04), (1, 2)))


def _rng(prompt: list[int], salt: int) -> np.random.Generator:
    return np.random.default_rng([*prompt[-8:], len(prompt), salt])


def fake_rollout(prompts, *, pad_id, eos_id, vocab):
    """Deterministic completions of 1..MAX_NEW tokens per (prompt, position in group)."""
    from semgrpo.data import collate_left_padded
    from semgrpo.rollout import Rollout

    prompt_ids, prompt_mask = collate_left_padded(prompts, pad_token_id=pad_id)
    ids = torch.full((len(prompts), MAX_NEW), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        rng = _rng(p, row % G)
        n = int(rng.integers(1, MAX_NEW + 1))
        toks = rng.integers(5, vocab, size=n)
        if n < MAX_NEW:
            toks[-1] = eos_id
        ids[row, :n] = torch.as_tensor(toks)
        mask[row, :n] = 1
    return Rollout(prompt_ids, prompt_mask, ids, mask)


def fake_rewards(prompts, group_of: dict) -> torch.Tensor:
    out = []
    for row, p in enumerate(prompts):
        group = group_of[tuple(p)]
        out.append(1.0 if group == FLAT_GROUP else float(_rng(p, 100 + row % G).normal()))
    return torch.tensor(out, dtype=torch.float32)


# ----------------------------------------------------------------- the independent reference (TRL 1.16)
def trl_advantages(rewards: torch.Tensor, scale: str) -> torch.Tensor:
    r = rewards.double()
    grouped = r.view(-1, G)
    adv = (grouped - grouped.mean(1, keepdim=True)).view(-1)
    if scale == "group":
        adv = adv / (grouped.std(1).repeat_interleave(G) + 1e-4)
    elif scale == "batch":
        adv = adv / (r.std() + 1e-4)
    return adv.float()


def trl_loss(logp, old, ref, adv, mask, *, loss_type, beta, max_len, eps=0.2):
    coef_1 = torch.exp(logp - old)
    coef_2 = torch.clamp(coef_1, 1 - eps, 1 + eps)
    per_token = -torch.min(coef_1 * adv[:, None], coef_2 * adv[:, None])
    if beta:
        per_token = per_token + beta * (torch.exp(ref - logp) - (ref - logp) - 1)
    m = mask.float()
    if loss_type == "grpo":
        return ((per_token * m).sum(-1) / m.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "bnpo":
        return (per_token * m).sum() / m.sum().clamp(min=1.0)
    if loss_type == "dr_grpo":
        return (per_token * m).sum() / (per_token.size(0) * max_len)
    return (per_token * m).sum() / m.sum().clamp(min=1.0)  # dapo: the global token count


def completion_logps(model, r, temperature):
    ids = torch.cat([r.prompt_ids, r.completion_ids], 1)
    att = torch.cat([r.prompt_mask, r.completion_mask], 1)
    pos = (att.cumsum(1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=att, position_ids=pos).logits.float()
    logits = logits[:, r.prompt_ids.shape[1] - 1:-1] / temperature
    return torch.log_softmax(logits, -1).gather(-1, r.completion_ids[..., None]).squeeze(-1)


# Gradient accumulation steps: 1 (no accumulation) and 4 (one group per micro-batch, so skipped groups leave
# some micro-batches empty); 2 added nothing 4 does not cover for a third more time.
GRAD_ACCUM = (1, 4)


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    out_path, workdir = Path(args[0]), Path(args[1])
    scales = tuple(args[2].split(",")) if len(args) > 2 else SCALES
    import deepspeed
    from deepspeed.utils import safe_get_full_grad
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    import semgrpo.train as train
    from semgrpo import dist
    from semgrpo.config import load_config
    from semgrpo.session import init_distributed

    init_distributed()
    world = dist.world_size()
    rows = []
    reference_model = None
    for ga in GRAD_ACCUM:
        ds = json.loads(Path("ds_configs/zero3.json").read_text())
        ds.update(train_micro_batch_size_per_gpu=PROMPTS * G // world // ga, gradient_accumulation_steps=ga,
                  gradient_clipping=0.0)
        ds["zero_optimization"]["stage3_param_persistence_threshold"] = 0
        ds_path = workdir / f"zero3_w{world}_ga{ga}.json"
        if dist.is_main():
            ds_path.write_text(json.dumps(ds))
        dist.barrier()
        cfg = load_config(["configs/demo.yaml"], [
            f"train.deepspeed={ds_path}", f"output_dir={workdir / f'run_w{world}_ga{ga}'}", f"grpo.group_size={G}",
            f"grpo.max_completion_length={MAX_NEW}", "model.lora.r=4", "model.lora.dropout=0.0", "train.lr=1e-2",
            "reward.functions=[language]", "eval.every_steps=0", "grpo.merge_adapter_for_generation=false"])
        run, order, _ = train.build_grpo_run(cfg)
        engine, tok = run.engine, run.setup.tokenizer
        lora = {n: p for n, p in engine.module.named_parameters() if "lora_" in n}
        with deepspeed.zero.GatheredParameters(list(lora.values()), modifier_rank=0):
            if dist.is_main():  # lora_B starts at 0; give A's gradient something to carry
                gen = torch.Generator().manual_seed(7)
                for n, p in lora.items():
                    if "lora_B" in n:
                        p.data.copy_(torch.randn(p.shape, generator=gen) * 0.05)

        global_ids = [i for r in range(world) for i in order.indices(0, rank=r, world_size=world)]
        global_prompts = [run.setup.train[i].prompt_ids for i in global_ids for _ in range(G)]
        group_of = {tuple(run.setup.train[i].prompt_ids): k for k, i in enumerate(global_ids)}
        vocab = engine.module.config.vocab_size
        fake = dict(pad_id=tok.pad_token_id, eos_id=run.eos[0], vocab=vocab)
        train.generate = lambda _m, prompts, **_: fake_rollout(prompts, **fake)
        my_ids = order.indices(0, rank=dist.rank(), world_size=world)
        batch = [run.setup.train[i] for i in my_ids]
        # the fake scorer sees prompt texts; map them back to token ids
        text_to_ids = {run.setup.train[i].prompt: run.setup.train[i].prompt_ids for i in global_ids}
        train.score_on_every_rank = lambda _f, _w, prompts, *_a, device=None: (
            lambda r: (r.to(device), {"fake": r.to(device)}))(fake_rewards([text_to_ids[p] for p in prompts],
                                                                             group_of))

        captured, modes = [], []
        engine.module.register_forward_pre_hook(
            lambda mod, _inp: modes.append(mod.training) if torch.is_grad_enabled() else None)
        original_step = engine.step

        def recording_step(*a, **k):
            if engine.is_gradient_accumulation_boundary():
                grads = {n: safe_get_full_grad(p).detach().clone().float() for n, p in lora.items()}
                with deepspeed.zero.GatheredParameters(list(lora.values())):
                    weights = {n: p.detach().clone().float() for n, p in lora.items()}
                captured.append((weights, grads))
            return original_step(*a, **k)

        engine.step = recording_step

        if dist.is_main() and reference_model is None:
            base = AutoModelForCausalLM.from_pretrained(cfg.model.path, torch_dtype=torch.float32)
            reference_model = get_peft_model(base, LoraConfig(
                r=cfg.model.lora.r, lora_alpha=cfg.model.lora.alpha, lora_dropout=0.0,
                target_modules=cfg.model.lora.target_modules))
        for loss_type, scale, beta, mu in grid(scales):
            g = run.cfg.grpo
            g.loss_type, g.scale_rewards, g.beta, g.num_iterations = loss_type, scale, beta, mu
            captured.clear()
            modes.clear()
            engine.module.eval()  # as an evaluation or a meter may leave it: the step must not depend on it
            train.grpo_step(run, lambda: batch)
            if not dist.is_main():
                continue
            rollout = fake_rollout(global_prompts, **fake)
            rewards = fake_rewards(global_prompts, group_of)
            adv = trl_advantages(rewards, scale)
            grouped = rewards.view(-1, G)
            informative = (grouped.max(1).values != grouped.min(1).values).repeat_interleave(G)
            keep = torch.arange(len(rewards)) if beta > 0 else informative.nonzero().flatten()
            sub = rollout.select(keep)
            model = reference_model
            named = dict(model.named_parameters())

            def load(weights):
                with torch.no_grad():
                    for n, t in weights.items():
                        named[n].copy_(t)

            load(captured[0][0])
            model.eval()
            with torch.no_grad():
                old = completion_logps(model, sub, g.temperature)
                with model.disable_adapter():
                    ref = completion_logps(model, sub, g.temperature)
            for it, (weights, grads) in enumerate(captured):
                load(weights)
                model.zero_grad(set_to_none=True)
                logp = completion_logps(model, sub, g.temperature)
                loss = trl_loss(logp, old if mu > 1 else logp.detach(), ref, adv[keep], sub.completion_mask,
                                loss_type=loss_type, beta=beta, max_len=MAX_NEW)
                loss.backward()
                ours = torch.cat([grads[n].flatten() for n in sorted(grads)])
                theirs = torch.cat([named[n].grad.flatten() for n in sorted(grads)])
                rows.append({"world": world, "ga": ga, "loss_type": loss_type, "scale": scale, "beta": beta,
                             "mu": mu, "iteration": it + 1, "updates": len(captured),
                             "rel_err": float((ours - theirs).norm() / theirs.norm()),
                             "grad_norm": float(theirs.norm()), "train_mode": list(modes)})
        # Every group flat, beta 0: nothing to learn, yet the optimizer and its LR schedule step as TRL's do.
        g = run.cfg.grpo
        g.beta, g.num_iterations = 0.0, 1
        group_of_flat = {key: FLAT_GROUP for key in group_of}
        train.score_on_every_rank = lambda _f, _w, prompts, *_a, device=None: (
            lambda r: (r.to(device), {"fake": r.to(device)}))(fake_rewards([text_to_ids[p] for p in prompts],
                                                                             group_of_flat))
        before = engine.global_steps
        metrics, _ = train.grpo_step(run, lambda: batch)
        if dist.is_main():
            rows.append({"world": world, "ga": ga, "case": "all_flat", "optimizer_steps": engine.global_steps - before,
                         "trained_fraction": metrics["completion/trained_fraction"]})
    if dist.is_main():
        out_path.write_text(json.dumps(rows))


if __name__ == "__main__":
    from semgrpo.errors import run_entry_point

    sys.exit(run_entry_point("_grpo_parity.py", main))  # leaves the process group on every way out
