"""Live alignment-tax meter: OOD token NLL and KL of the policy vs its reference, logged during GRPO.

Every `eval.every_steps` steps the trainer runs two no-grad forward passes over a fixed subset of OOD
passages (`eval.ood_passages`, `eval.ood_samples` of them, `eval.ood_max_tokens` tokens each): one with
the LoRA adapter on (the policy) and one with it disabled. "Adapter disabled" is the GRPO reference: the
base model, or the cold-start policy when `model.init_from` merged a stage-1 adapter in. So the meter
shows the drift this GRPO stage adds; `bin/evaluate.py` measures it against the original base.

Under ZeRO-3 every rank runs the same number of forward passes (the parameter gathers are collective):
the windows are split evenly, a rank short of windows repeats one and masks it out.
"""
from __future__ import annotations

import torch

from semgrpo import dist
from semgrpo.collectives import gather_cat
from semgrpo.config import Config, ConfigError
from semgrpo.metrics import summarize, token_nll_kl
from semgrpo.ood import OODError, encode_windows, load_passages, pad_windows


class TaxMeter:
    """Fixed OOD windows for this rank; `measure(engine)` -> the `tax/*` scalars (same on every rank)."""

    def __init__(self, cfg: Config, tokenizer):
        e = cfg.eval
        if not cfg.model.lora.enabled:
            raise ConfigError("eval.every_steps > 0 needs model.lora.enabled: the meter compares the policy "
                              "with its adapter disabled")
        if not e.ood_passages:
            raise ConfigError("eval.every_steps > 0 needs eval.ood_passages (CMRC JSON, JSONL or text file)")
        try:
            windows = encode_windows(tokenizer, load_passages(e.ood_passages, limit=e.ood_samples),
                                     max_tokens=e.ood_max_tokens)
        except OODError as exc:
            raise ConfigError(f"eval.ood_passages: {exc}") from None
        per_rank = -(-len(windows) // dist.world_size())
        mine = windows[dist.rank() * per_rank:(dist.rank() + 1) * per_rank]
        real = len(mine)
        mine = mine + [windows[0]] * (per_rank - real)
        # Every rank pads to the same width so the gathered per-token tensors line up.
        ids, attention = pad_windows(mine, pad_id=tokenizer.pad_token_id)
        extra = max(len(w) for w in windows) - ids.shape[1]
        self.ids = torch.nn.functional.pad(ids, (0, extra), value=tokenizer.pad_token_id)
        self.attention = torch.nn.functional.pad(attention, (0, extra), value=0)
        self.valid = self.attention.clone()
        self.valid[real:] = 0  # repeated windows only keep the collectives in step
        self.batch_size = e.batch_size
        self.num_passages = len(windows)

    @torch.no_grad()
    def measure(self, engine) -> dict[str, float]:
        model, device = engine.module, engine.device
        was_training = model.training
        model.eval()  # LoRA dropout off: the measurement is deterministic
        rows = []
        for s in range(0, self.ids.shape[0], self.batch_size):
            ids, mask = self.ids[s:s + self.batch_size].to(device), self.attention[s:s + self.batch_size].to(device)
            policy = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            with model.disable_adapter():
                reference = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            every = torch.ones_like(ids[:, 1:])  # all positions; padding is dropped after the gather
            stats = token_nll_kl(reference[:, :-1], policy[:, :-1], ids[:, 1:], every)
            shape = ids[:, 1:].shape
            rows.append(torch.stack([torch.from_numpy(stats[k]).view(shape) for k in ("nll_adapted", "kl",
                                                                                      "delta_nll")], dim=-1))
        model.train(was_training)
        per_token = gather_cat(torch.cat(rows).to(device)).cpu()  # [passages, T-1, 3]
        valid = gather_cat(self.valid[:, 1:].to(device)).cpu().bool()
        nll, kl, delta = (per_token[..., i][valid] for i in range(3))
        out = {}
        for name, values in (("nll", nll), ("kl", kl)):
            s = summarize(values)
            out[f"tax/{name}_mean"], out[f"tax/{name}_p90"] = s["mean"], s["p90"]
        out["tax/delta_nll_mean"] = float(delta.mean())
        return out
