"""Gradient-parity harness, run by test_grpo_parity.py as `deepspeed --num_gpus W tests/_grpo_parity.py OUT.json DIR`.

Fixed completions and rewards go through the real `grpo_step` (generation and scoring are replaced by
deterministic fakes; everything after them is the trainer's own code under ZeRO-3). At each optimizer
boundary the full LoRA gradient DeepSpeed is about to apply is recorded with the weights it was taken at.
Rank 0 then recomputes that gradient with an independent float64 reference: TRL 1.16's loss formulas written
out below for every loss type and option, applied once to the *global* batch (every rank's completions together;
informative groups only when beta == 0, every completion when beta > 0), on a float64 PEFT copy of the policy.

Old log-probs (num_iterations 2) are shifted by a fixed function of each completion, on the trainer's side and in
the reference alike, as if an older policy had sampled them: the importance ratios then spread over about
[0.5, 2], so clipping (asymmetric, 0.2 / 0.28), cispo's cap, sapo's gate and vespo's weight all act from the
first iteration on; each row reports the reference's clipped fraction. One JSON row per case and iteration holds
the worst per-tensor relative error and the train/eval mode of every policy pass; the all-flat rows hold the
gradient and the weight change of a step with nothing to learn, and a planted bug (eps_low and eps_high swapped
in the trainer only) must show up as a large error.
"""
import contextlib
import dataclasses
import itertools
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's semgrpo, not an installed one
from _tolerance import chain_rtol  # tests/ is this script's folder

G = 4              # group size
PROMPTS = 4        # global prompts per step: 16 completions, split over the ranks
MAX_NEW = 6        # completion length cap (a completion of MAX_NEW tokens has no eos: truncated)
FLAT_GROUP = 1     # global group index whose rewards are all equal (zero variance)
TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo")
CLIP_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")
LEVELS = ("token", "sequence")
SCALES = ("group", "batch", "none")
EPS_LOW, EPS_HIGH, CISPO_CAP = 0.2, 0.28, 1.2
# Options every case sets away from their defaults, so that the config keys are seen to reach the loss.
SAPO = dict(sapo_temperature_pos=0.8, sapo_temperature_neg=1.3)
VESPO = dict(vespo_k_pos=1.5, vespo_lambda_pos=3.0, vespo_k_neg=2.5, vespo_lambda_neg=2.5)
# Gradient accumulation steps: 1 (no accumulation) and 4 (one group per micro-batch, so skipped groups leave
# some micro-batches empty).
GRAD_ACCUM = (1, 4)


@dataclasses.dataclass(frozen=True)
class Case:
    loss_type: str
    level: str = "token"
    beta: float = 0.04
    bias_correction: bool = True
    mu: int = 2
    scale: str = "group"
    delta: float | None = None
    mask_truncated: bool = False
    flat_group: bool = True  # one group of the batch has equal rewards
    mutant: bool = False  # the trainer runs with eps_low and eps_high swapped; the reference does not

    @property
    def eps_high(self) -> float:
        return CISPO_CAP if self.loss_type == "cispo" else EPS_HIGH

    @property
    def clips(self) -> bool:
        """Whether the reference's clipped (capped) fraction must be > 0: old log-probs are shifted only with mu 2."""
        return self.mu > 1 and self.loss_type in (*CLIP_TYPES, "cispo")

    def name(self) -> str:
        parts = [self.loss_type, self.level, f"beta={self.beta}", f"bc={self.bias_correction}", f"mu={self.mu}",
                 f"scale={self.scale}"]
        parts += [f"delta={self.delta}"] * (self.delta is not None) + ["mask_truncated"] * self.mask_truncated
        parts += ["no_flat_group"] * (not self.flat_group) + ["MUTANT"] * self.mutant
        return " ".join(parts)


def cases(ga: int) -> list[Case]:
    """The grid at GA `ga`. At GA 4 every loss type x importance-sampling level x bias-corrected KL (beta > 0, the
    scale rotating), every type at beta 0 (the flat group left out; mu 1: no old log-probs), and the other
    options; at GA 1 (no accumulation) one type per way LossNormalizer shares the loss, and the planted bug."""
    if ga == 1:  # one type per normaliser share (rows / S, tokens / N, 1), and the planted bug
        return [Case("grpo"), Case("bnpo", scale="batch"), Case("dapo", beta=0.0, scale="none"),
                Case("dapo", level="sequence", mutant=True), Case("grpo", mutant=True)]
    grid = itertools.product(TYPES, LEVELS, (True, False))
    return [Case(t, level=lv, bias_correction=bc, scale=SCALES[i % 3]) for i, (t, lv, bc) in enumerate(grid)] + [
        Case(t, beta=0.0, mu=1, scale=SCALES[i % 3]) for i, t in enumerate(TYPES)] + [
        Case("grpo", beta=0.0, flat_group=False), Case("grpo", mask_truncated=True),
        Case("dapo", mask_truncated=True, beta=0.0), Case("grpo", delta=1.25), Case("luspo", level="sequence",
                                                                                    delta=1.25)]


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


def fake_rewards(prompts, group_of: dict, flat_group: bool) -> torch.Tensor:
    out = []
    for row, p in enumerate(prompts):
        group = group_of[tuple(p)]
        flat = flat_group and group == FLAT_GROUP
        out.append(1.0 if flat else float(_rng(p, 100 + row % G).normal()))
    return torch.tensor(out, dtype=torch.float32)


def old_shift(r) -> torch.Tensor:
    """float64 [N, C]: what the old log-probs are moved by, a fixed function of each completion's content (a
    per-sequence part, so sequence-level ratios spread too, and a per-token part); 0 at padding."""
    key = (r.prompt_ids * r.prompt_mask).sum(1).double() + 0.5 * r.completion_ids.sum(1).double()
    per_seq = 0.45 * torch.sin(0.37 * key)
    per_tok = 0.35 * torch.sin(1.9 * r.completion_ids.double() + 0.7 * torch.arange(r.completion_ids.shape[1]))
    return (per_seq[:, None] + per_tok) * r.completion_mask.double()


# ----------------------------------------------------------------- the independent reference (TRL 1.16)
def trl_advantages(rewards: torch.Tensor, scale: str) -> torch.Tensor:
    r = rewards.double()
    grouped = r.view(-1, G)
    adv = (grouped - grouped.mean(1, keepdim=True)).view(-1)
    if scale == "group":
        adv = adv / (grouped.std(1).repeat_interleave(G) + 1e-4)
    elif scale == "batch":
        adv = adv / (r.std() + 1e-4)
    return adv


def trl_loss(logp, old, ref, adv, mask, c: Case):
    """TRL 1.16 GRPOTrainer._compute_loss's loss for case `c` in float64, and the fraction of loss tokens (or
    sequences, at sequence level) whose ratio is clipped (capped for cispo)."""
    m = mask.double()
    A = adv[:, None]
    log_ratio = logp - old
    if c.level == "sequence":
        log_ratio_is = (log_ratio * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp(min=1.0)
    else:
        log_ratio_is = log_ratio
    ratio = torch.exp(log_ratio_is)
    clipped = None
    if c.loss_type == "cispo":
        per_token = -torch.clamp(ratio, max=c.eps_high).detach() * A * logp
        clipped = (ratio > c.eps_high) & (A > 0)
    elif c.loss_type in CLIP_TYPES:
        clipped_ratio = torch.clamp(ratio, 1 - EPS_LOW, 1 + c.eps_high)
        capped = ratio if c.delta is None else torch.clamp(ratio, max=c.delta)
        per_token = -torch.min(capped * A, clipped_ratio * A)
        clipped = ((capped < 1 - EPS_LOW) & (A < 0)) | ((capped > 1 + c.eps_high) & (A > 0))
    elif c.loss_type == "sapo":
        tau = torch.where(A > 0, SAPO["sapo_temperature_pos"], SAPO["sapo_temperature_neg"])
        per_token = -torch.sigmoid(tau * (ratio - 1)) * 4 / tau * A
    else:  # vespo: a detached gamma weight of the sequence's summed log-ratio
        with torch.no_grad():
            log_w = (torch.clamp(log_ratio, -20, 20) * m).sum(-1, keepdim=True).clamp(math.log(1e-8), 20)
            k = torch.where(A >= 0, VESPO["vespo_k_pos"], VESPO["vespo_k_neg"])
            lam = torch.where(A >= 0, VESPO["vespo_lambda_pos"], VESPO["vespo_lambda_neg"])
            phi = torch.exp(lam + k * log_w - lam * torch.exp(log_w))
        per_token = -phi * A * logp
    if c.beta:
        kl = torch.exp(ref - logp) - (ref - logp) - 1
        per_token = per_token + c.beta * (kl * ratio if c.bias_correction else kl)
    per_token = per_token.expand(m.shape)
    if c.loss_type in ("grpo", "sapo"):
        loss = ((per_token * m).sum(-1) / m.sum(-1).clamp(min=1.0)).mean()
    elif c.loss_type == "luspo":
        loss = (per_token * m).sum(-1).mean()
    elif c.loss_type == "dr_grpo":
        loss = (per_token * m).sum() / (per_token.size(0) * MAX_NEW)
    else:  # bnpo, and dapo/cispo/vespo with num_items_in_batch = the global batch's token count
        loss = (per_token * m).sum() / m.sum().clamp(min=1.0)
    if clipped is None:
        fraction = None
    elif clipped.shape[-1] == 1:
        fraction = float(clipped.double().mean())
    else:
        fraction = float((clipped.double() * m).sum() / m.sum())
    kinks = [k for k in (1 - EPS_LOW, 1 + c.eps_high, c.delta) if k is not None]
    live = ratio.detach().expand(m.shape)[m != 0]
    nearest = min(float((live - k).abs().min()) for k in kinks) if c.loss_type in (*CLIP_TYPES, "cispo") else None
    return loss, fraction, nearest


def completion_logps(model, r, temperature):
    ids = torch.cat([r.prompt_ids, r.completion_ids], 1)
    att = torch.cat([r.prompt_mask, r.completion_mask], 1)
    pos = (att.cumsum(1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=att, position_ids=pos).logits  # the model's dtype
    logits = logits[:, r.prompt_ids.shape[1] - 1:-1] / temperature
    return torch.log_softmax(logits, -1).gather(-1, r.completion_ids[..., None]).squeeze(-1)


def worst_tensor_error(ours: dict, theirs: dict) -> tuple[float, str]:
    """max over LoRA tensors of |g - g_ref| / |g_ref|, and that tensor's name."""
    errors = {n: float((ours[n].double() - theirs[n]).norm() / theirs[n].norm()) for n in theirs}
    name = max(errors, key=errors.get)
    return errors[name], name


# ----------------------------------------------------------------- the run
class Harness:
    """One engine per GA, the fakes installed in semgrpo.train, and the recording of every optimizer step."""

    def __init__(self, train, run, order, world):
        import deepspeed
        from deepspeed.utils import safe_get_full_grad, safe_set_full_fp32_param

        from semgrpo import dist

        self.train, self.run, self.world = train, run, world
        engine, tok = run.engine, run.setup.tokenizer
        self.lora = {n: p for n, p in engine.module.named_parameters() if "lora_" in n}
        # lora_B starts at 0; give A's gradient something to carry. Every rank draws the same values and sets them
        # in the model's weights and in the optimizer's fp32 copy (which the first step would otherwise write back).
        gen = torch.Generator().manual_seed(7)
        lora_b = {n: torch.randn(p.ds_shape, generator=gen) * 0.05 for n, p in self.lora.items() if "lora_B" in n}
        with deepspeed.zero.GatheredParameters(list(self.lora.values()), modifier_rank=0):
            if dist.is_main():
                for n, value in lora_b.items():
                    self.lora[n].data.copy_(value)
        for n, value in lora_b.items():
            safe_set_full_fp32_param(self.lora[n], value)
        self.initial = self.weights()
        global_ids = [i for r in range(world) for i in order.indices(0, rank=r, world_size=world)]
        self.global_prompts = [run.setup.train[i].prompt_ids for i in global_ids for _ in range(G)]
        self.group_of = {tuple(run.setup.train[i].prompt_ids): k for k, i in enumerate(global_ids)}
        self.fake = dict(pad_id=tok.pad_token_id, eos_id=run.eos[0], vocab=engine.module.config.vocab_size)
        self.batch = [run.setup.train[i] for i in order.indices(0, rank=dist.rank(), world_size=world)]
        text_to_ids = {run.setup.train[i].prompt: run.setup.train[i].prompt_ids for i in global_ids}
        self.flat_group = True
        train.generate = lambda _m, prompts, **_: fake_rollout(prompts, **self.fake)
        train.score_on_every_rank = lambda _f, _w, prompts, *_a, device=None: (
            lambda r: (r.to(device), {"fake": r.to(device)}))(
            fake_rewards([text_to_ids[p] for p in prompts], self.group_of, self.flat_group))
        real_logps = getattr(train._logps_per_micro_batch, "unshifted", train._logps_per_micro_batch)  # GA 4: once

        def shifted_old_logps(model, context, grpo, rollout, micro_batches):
            out = real_logps(model, context, grpo, rollout, micro_batches)
            if isinstance(context, contextlib.nullcontext):  # the old-policy pass (the reference's disables LoRA)
                out = [lp + old_shift(rollout.select(rows if len(rows) else torch.tensor([0]))).float()
                       for lp, rows in zip(out, micro_batches)]
            return out

        shifted_old_logps.unshifted = real_logps
        train._logps_per_micro_batch = shifted_old_logps
        self.real_options = train.loss_options
        self.captured, self.modes = [], []
        engine.module.register_forward_pre_hook(
            lambda mod, _inp: self.modes.append(mod.training) if torch.is_grad_enabled() else None)
        original_step = engine.step

        def recording_step(*a, **k):
            if engine.is_gradient_accumulation_boundary():
                grads = {n: safe_get_full_grad(p).detach().clone().float() for n, p in self.lora.items()}
                self.captured.append((self.weights(), grads))
            return original_step(*a, **k)

        engine.step = recording_step

    def weights(self) -> dict:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(self.lora.values())):
            return {n: p.detach().clone().float() for n, p in self.lora.items()}

    def reset(self) -> None:
        """The LoRA weights of the start, in the model and the optimizer's fp32 copy: every case starts from the same
        policy, whatever ran before it (Adam's moments carry over; they only shape the update between iterations)."""
        import deepspeed
        from deepspeed.utils import safe_set_full_fp32_param

        from semgrpo import dist

        with deepspeed.zero.GatheredParameters(list(self.lora.values()), modifier_rank=0):
            if dist.is_main():
                for n, value in self.initial.items():
                    self.lora[n].data.copy_(value)
        for n, value in self.initial.items():
            safe_set_full_fp32_param(self.lora[n], value)

    def step(self, c: Case | None):
        """One grpo_step with case `c` (None: every group flat, nothing to learn), from the start weights."""
        self.reset()
        g = self.run.cfg.grpo
        c_ = c or Case("grpo", beta=0.0, mu=1)
        g.loss_type, g.importance_sampling_level, g.beta = c_.loss_type, c_.level, c_.beta
        g.use_bias_correction_kl, g.num_iterations, g.scale_rewards = c_.bias_correction, c_.mu, c_.scale
        g.delta, g.mask_truncated_completions, g.eps_low, g.eps_high = c_.delta, c_.mask_truncated, EPS_LOW, c_.eps_high
        for k, v in {**SAPO, **VESPO}.items():
            setattr(g, k, v)
        self.flat_group = c_.flat_group
        self.group_of_backup = dict(self.group_of)
        if c is None:
            self.group_of = {key: FLAT_GROUP for key in self.group_of}
        swap = (lambda o: dataclasses.replace(o, eps_low=o.eps_high, eps_high=o.eps_low))
        self.train.loss_options = (lambda grpo: swap(self.real_options(grpo))) if c_.mutant else self.real_options
        self.captured.clear()
        self.modes.clear()
        self.run.engine.module.eval()  # as an evaluation or a meter may leave it: the step must not depend on it
        try:
            return self.train.grpo_step(self.run, lambda: self.batch)
        finally:
            self.group_of = self.group_of_backup
            self.train.loss_options = self.real_options


# A gradient this close to the float64 one needs no further look: the trainer's fp32 rounding along the demo
# policy's forward and backward chain (2 reductions per layer and the head's 2, the widest a log-softmax over its
# 764-token vocabulary; tests/_tolerance.py), when the result does not cancel. Above it, each tensor is judged
# against how far the same formulas evaluated in fp32 land from float64 (test_grpo_parity.py).
FLOOR = chain_rtol(torch.float32, 764, depth=2 * 2 + 2)


def _reference_grads(h: Harness, c: Case, model, dtype, sub, adv):
    """Per update of case `c`: the reference gradient (float64 here, a dict of tensors) of TRL's loss at the captured
    weights, with the model in `dtype`, and the clipped fraction and the nearest clip boundary of the ratios."""
    named = dict(model.named_parameters())
    temperature = h.run.cfg.grpo.temperature

    def load(weights):
        with torch.no_grad():
            for n, t in weights.items():
                named[n].copy_(t.to(dtype))

    load(h.captured[0][0])
    model.eval()
    with torch.no_grad():
        old = completion_logps(model, sub, temperature) + old_shift(sub).to(dtype)
        with model.disable_adapter():
            ref = completion_logps(model, sub, temperature)
    out = []
    for weights, _ in h.captured:
        load(weights)
        model.zero_grad(set_to_none=True)
        logp = completion_logps(model, sub, temperature)
        loss, clipped, nearest = trl_loss(logp, old if c.mu > 1 else logp.detach(), ref, adv.to(dtype),
                                          sub.completion_mask, c)
        loss.backward()
        out.append(({n: named[n].grad.double() for n in weights}, clipped, nearest))
    return out


def reference_rows(h: Harness, c: Case, models: dict, world: int, ga: int) -> list[dict]:
    """Rank 0: the float64 reference gradient of every update of case `c`, compared per tensor with the captured one
    (relative to that tensor's norm), and, where that error is above FLOOR, the error of the same formulas evaluated in
    fp32 (the rounding scale of this very gradient)."""
    rollout = fake_rollout(h.global_prompts, **h.fake)
    rewards = fake_rewards(h.global_prompts, h.group_of, c.flat_group)
    adv = trl_advantages(rewards, c.scale)
    grouped = rewards.view(-1, G)
    informative = (grouped.max(1).values != grouped.min(1).values).repeat_interleave(G)
    keep = torch.arange(len(rewards)) if c.beta > 0 else informative.nonzero().flatten()
    sub = rollout.select(keep)
    if c.mask_truncated:  # TRL's mask: a completion without eos stays in the batch with no token in the loss
        has_eos = ((sub.completion_ids == h.fake["eos_id"]) & (sub.completion_mask != 0)).any(1)
        sub = type(sub)(sub.prompt_ids, sub.prompt_mask, sub.completion_ids, sub.completion_mask * has_eos[:, None])
    truth = _reference_grads(h, c, models[torch.float64], torch.float64, sub, adv[keep])
    errors = [{n: float((ours[n].double() - t).norm() / t.norm()) for n, t in grads.items()}
              for (_, ours), (grads, _, _) in zip(h.captured, truth)]
    fp32 = [None] * len(errors)
    if max(max(e.values()) for e in errors) > FLOOR:
        fp32 = [{n: float((g32[n] - t).norm() / t.norm()) for n, t in grads.items()}
                for (g32, _, _), (grads, _, _) in zip(_reference_grads(h, c, models[torch.float32], torch.float32,
                                                                       sub, adv[keep]), truth)]
    rows = []
    for it, ((grads, clipped, nearest), err, err32) in enumerate(zip(truth, errors, fp32)):
        worst = max(err, key=err.get)
        rows.append({"case": c.name(), "mutant": c.mutant, "clips": c.clips, "mu": c.mu, "world": world, "ga": ga,
                     "iteration": it + 1, "updates": len(h.captured), "rel_err": err[worst], "worst_tensor": worst,
                     "tensor_err": err, "tensor_err_fp32": err32,
                     "grad_norm": float(torch.cat([t.flatten() for t in grads.values()]).norm()),
                     "clipped_fraction": clipped, "nearest_kink": nearest, "train_mode": list(h.modes)})
    return rows


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    out_path, workdir = Path(args[0]), Path(args[1])
    only = args[2] if len(args) > 2 else ""  # debugging: run only the cases whose name holds this text
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    import semgrpo.train as train
    from semgrpo import dist
    from semgrpo.config import load_config
    from semgrpo.session import init_distributed

    init_distributed()
    world = dist.world_size()
    rows = []
    reference_models = {}
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
            f"run.deepspeed={ds_path}", f"output_dir={workdir / f'run_w{world}_ga{ga}'}", f"grpo.group_size={G}",
            f"grpo.max_completion_length={MAX_NEW}", "model.lora.r=4", "model.lora.dropout=0.0", "grpo.lr=1e-2",
            "reward.functions=[language]", "tax_meter.every_steps=0", "grpo.merge_adapter_for_generation=false"])
        run, order, _ = train.build_grpo_run(cfg)
        h = Harness(train, run, order, world)
        if dist.is_main() and not reference_models:
            for dtype in (torch.float64, torch.float32):
                base = AutoModelForCausalLM.from_pretrained(cfg.model.path, dtype=dtype)
                reference_models[dtype] = get_peft_model(base, LoraConfig(
                    r=cfg.model.lora.r, lora_alpha=cfg.model.lora.alpha, lora_dropout=0.0,
                    target_modules=cfg.model.lora.target_modules))
        # Every group flat, beta 0, first (Adam has no state yet): nothing to learn, a zero gradient, unchanged
        # weights, yet the optimizer and its LR schedule step, as TRL's do.
        before, steps_before = h.weights(), run.engine.global_steps
        metrics, _ = h.step(None)
        after = h.weights()
        if dist.is_main():
            grads = h.captured[0][1]
            rows.append({"all_flat": True, "world": world, "ga": ga,
                         "optimizer_steps": run.engine.global_steps - steps_before,
                         "trained_fraction": metrics["completion/trained_fraction"],
                         "max_abs_grad": max(float(t.abs().max()) for t in grads.values()),
                         "max_abs_update": max(float((after[n] - before[n]).abs().max()) for n in before)})
        for c in cases(ga):
            if only and only not in c.name():
                continue
            h.step(c)
            if dist.is_main():
                rows += reference_rows(h, c, reference_models, world, ga)
    if dist.is_main():
        out_path.write_text(json.dumps(rows))


if __name__ == "__main__":
    from semgrpo.errors import run_entry_point

    sys.exit(run_entry_point("_grpo_parity.py", main))  # leaves the process group on every way out
