"""Swap semgrpo's fused GRPO loss into TRL's ``GRPOTrainer``.

    from trl import GRPOTrainer
    from semgrpo.integrations.trl import use_semgrpo_loss

    trainer = GRPOTrainer(model=..., reward_funcs=..., args=..., train_dataset=...)
    use_semgrpo_loss(trainer)          # loss now computed by semgrpo.ops.grpo_loss
    trainer.train()

The patched ``_compute_loss`` runs the policy forward for the completion logits and calls
:func:`semgrpo.ops.grpo_loss` (Triton on CUDA, torch on CPU) with TRL's temperature, clip range,
beta, loss type and normalizers, then logs ``kl`` and the ``clip_ratio/*_mean`` metrics as TRL does.
Configurations our op does not cover (sequence-level importance sampling, entropy masks or bonus,
off-policy masks, vLLM importance correction, two-sided ``delta`` clipping, bias-corrected KL, MoE aux
loss, multimodal inputs, loss types other than grpo/bnpo/dr_grpo/dapo) fall back to TRL's own loss,
decided per call. Tested with trl 1.16.0.
"""

from __future__ import annotations

import types
import warnings

import torch

from semgrpo.ops import LOSS_TYPES, grpo_loss

_MULTIMODAL_KEYS = ("pixel_values", "image_grid_thw", "pixel_attention_mask", "image_sizes", "token_type_ids",
                    "mm_token_type_ids", "spatial_shapes", "num_tiles", "image_position_ids")


def unsupported_reason(trainer, inputs: dict | None = None) -> str | None:
    """Why this trainer/batch needs TRL's own loss, or None when semgrpo's loss is exact."""
    args = trainer.args
    checks = (
        (trainer.loss_type not in LOSS_TYPES, f"loss_type={trainer.loss_type!r}"),
        (getattr(trainer, "importance_sampling_level", "token") != "token", "importance_sampling_level != 'token'"),
        (getattr(trainer, "top_entropy_quantile", 1.0) < 1.0, "top_entropy_quantile < 1"),
        (getattr(trainer, "off_policy_mask_threshold", None) is not None, "off_policy_mask_threshold"),
        (getattr(trainer, "use_vllm", False) and getattr(trainer, "vllm_importance_sampling_correction", False),
         "vLLM importance sampling correction"),
        (getattr(args, "delta", None) is not None, "delta (two-sided clipping)"),
        (getattr(args, "use_bias_correction_kl", False) and trainer.beta != 0.0,
         "use_bias_correction_kl with beta != 0 (TRL's default is True: set it False to use semgrpo)"),
        (getattr(trainer, "aux_loss_enabled", False), "MoE aux loss"),
        (getattr(trainer, "_entropy_bonus_enabled", False), "entropy bonus"),
    )
    for bad, why in checks:
        if bad:
            return why
    if inputs is not None and any(inputs.get(k) is not None for k in _MULTIMODAL_KEYS):
        return "multimodal inputs"
    return None


def _semgrpo_compute_loss(self, model, inputs):
    reason = unsupported_reason(self, inputs)
    if reason is not None:
        if reason not in self._semgrpo_warned:
            self._semgrpo_warned.add(reason)
            warnings.warn(f"semgrpo loss not used for this configuration ({reason}); falling back to TRL's loss",
                          stacklevel=2)
        return self._semgrpo_original_compute_loss(model, inputs)
    prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
    completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
    mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    K = completion_ids.size(1)
    with self.accelerator.autocast():
        logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=K + 1).logits
    logits = logits[:, -(K + 1) : -1]  # position t predicts completion token t; a view, no copy
    mode = "train" if self.model.training else "eval"
    num_items = None
    if self.loss_type == "dapo":
        num_items = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
        if mode == "train":
            num_items = num_items * self.current_gradient_accumulation_steps / self.args.steps_per_generation
    loss, stats = grpo_loss(
        logits, completion_ids, mask, inputs["advantages"], inputs.get("old_per_token_logps"),
        inputs.get("ref_per_token_logps") if self.beta != 0.0 else None,
        temperature=self.temperature, eps_low=self.epsilon_low, eps_high=self.epsilon_high, beta=self.beta,
        loss_type=self.loss_type, max_completion_length=self.max_completion_length, num_items_in_batch=num_items,
        backend=self._semgrpo_backend,
    )
    if self.loss_type != "dapo" and mode == "train":
        loss = loss / self.current_gradient_accumulation_steps
    # metrics as TRL logs them: token-weighted means reduced over processes
    count = mask.sum().float()
    names = [("clip_ratio/low_mean", "clip_ratio_low"), ("clip_ratio/high_mean", "clip_ratio_high"),
             ("clip_ratio/region_mean", "clip_ratio_region")]
    if self.beta != 0.0:
        names.append(("kl", "kl"))
    sums = torch.stack([stats[k] * count for _, k in names] + [count])
    sums = self.accelerator.reduce(sums, reduction="sum")
    for i, (metric, _) in enumerate(names):
        self._metrics[mode][metric].append((sums[i] / sums[-1].clamp(min=1.0)).item())
    return loss


def use_semgrpo_loss(trainer, *, backend: str | None = None):
    """Make a TRL ``GRPOTrainer`` compute its loss with :func:`semgrpo.ops.grpo_loss`.

    Args:
        trainer: A constructed ``trl.GRPOTrainer`` (patched in place; calling twice is a no-op).
        backend: Forces ``"triton"`` or ``"torch"`` for the op; default dispatch by device.

    Returns:
        The same trainer, for chaining.

    Raises:
        TypeError: ``trainer`` has no ``_compute_loss`` (not a GRPOTrainer of a supported TRL version).
    """
    if not hasattr(trainer, "_compute_loss") or not hasattr(trainer, "loss_type"):
        raise TypeError(f"expected a trl.GRPOTrainer with _compute_loss, got {type(trainer).__name__}")
    if backend not in (None, "auto", "triton", "torch"):
        raise ValueError(f"backend must be None, 'auto', 'triton' or 'torch', got {backend!r}")
    if not hasattr(trainer, "_semgrpo_original_compute_loss"):
        trainer._semgrpo_original_compute_loss = trainer._compute_loss
    trainer._semgrpo_backend = backend
    trainer._semgrpo_warned = set()
    trainer._compute_loss = types.MethodType(_semgrpo_compute_loss, trainer)
    return trainer
