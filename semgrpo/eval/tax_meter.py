"""Live alignment-tax meter: OOD token NLL and KL of the policy vs its reference, logged during GRPO.

Every `tax_meter.every_steps` steps the trainer runs two no-grad forward passes over a fixed subset of OOD
passages (`tax_meter.ood_passages`, `tax_meter.ood_samples` of them, `tax_meter.ood_max_tokens` tokens each): one with
the LoRA adapter on (the policy) and one with it disabled. "Adapter disabled" is the GRPO reference: the
base model, or the cold-start policy when `model.init_from` merged a stage-1 adapter in. So the meter
shows the drift this GRPO stage adds; `bin/evaluate.py` measures it against the original base.

Under ZeRO-3 every rank runs the same number of forward passes (the parameter gathers are collective):
the windows are split evenly, a rank short of windows repeats one and masks it out.
"""
from __future__ import annotations

import numpy as np
import torch

from semgrpo.config import Config, ConfigError
from semgrpo.dist import gather_cat, rank_share
from semgrpo.eval.metrics import summarize
from semgrpo.eval.models import logits_fn
from semgrpo.eval.ood import OODError, drift_per_token, encode_windows, load_passages


class TaxMeter:
    """Fixed OOD windows for this rank; `measure(engine)` -> the `tax/*` scalars (same on every rank)."""

    def __init__(self, cfg: Config, tokenizer):
        e = cfg.tax_meter
        if not cfg.model.lora.enabled:
            raise ConfigError("tax_meter.every_steps > 0 needs model.lora.enabled: the meter compares the policy "
                              "with its adapter disabled")
        if not e.ood_passages:
            raise ConfigError("tax_meter.every_steps > 0 needs tax_meter.ood_passages (CMRC JSON, JSONL or text file)")
        try:
            windows = encode_windows(tokenizer, load_passages(e.ood_passages, limit=e.ood_samples),
                                     max_tokens=e.ood_max_tokens)
        except OODError as exc:
            raise ConfigError(f"tax_meter.ood_passages: {exc}") from None
        self.windows, real = rank_share(windows)
        # the predicted tokens of this rank's own windows; `drift_per_token` returns them first
        self.real_tokens = sum(len(w) - 1 for w in self.windows[:real])
        # every rank sends the same number of rows to the gather: room for its share at the longest window
        self.capacity = len(self.windows) * (max(len(w) for w in windows) - 1)
        self.pad_id = tokenizer.pad_token_id
        self.batch_size = e.batch_size
        self.num_passages = len(windows)

    @torch.no_grad()
    def measure(self, engine) -> dict[str, float]:
        model, device = engine.module, engine.device
        was_training = model.training
        model.eval()  # LoRA dropout off: the measurement is deterministic
        policy = logits_fn(model)

        def reference(ids, mask):
            with model.disable_adapter():
                return policy(ids, mask)

        stats = drift_per_token(policy, reference, self.windows, pad_id=self.pad_id, batch_size=self.batch_size,
                                device=device)
        model.train(was_training)
        # columns nll, kl, delta_nll, valid; the repeated windows' tokens and the spare rows stay invalid
        n = self.real_tokens
        rows = torch.zeros(self.capacity, 4, dtype=torch.float64)
        rows[:n, :3] = torch.from_numpy(np.stack([stats[k][:n] for k in ("nll_adapted", "kl", "delta_nll")], 1))
        rows[:n, 3] = 1.0
        table = gather_cat(rows.to(device)).cpu()  # [world * capacity, 4], rank by rank
        valid = table[:, 3] == 1.0
        nll, kl, delta = (table[valid, i] for i in range(3))
        out = {}
        for name, values in (("nll", nll), ("kl", kl)):
            s = summarize(values)
            out[f"tax/{name}_mean"], out[f"tax/{name}_p90"] = s["mean"], s["p90"]
        out["tax/delta_nll_mean"] = float(delta.mean())
        return out
