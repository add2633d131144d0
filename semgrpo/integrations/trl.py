"""semgrpo's fused LM head inside TRL's ``GRPOTrainer`` (trl >= 1.16, < 1.17).

    from trl import GRPOTrainer
    from semgrpo.integrations.trl import use_semgrpo_loss

    trainer = GRPOTrainer(model=..., reward_funcs=..., args=..., train_dataset=...)
    use_semgrpo_loss(trainer)          # every log-prob pass now goes through semgrpo.ops
    trainer.train()

How it works. TRL 1.16's trainer computes every per-token log-prob it needs, the policy's in the loss, the old
policy's and the reference's, by calling the model with ``fused_lm_head=True``: a forward mode that its
``add_fused_lm_head`` gave the policy model (the PEFT base model under an adapter) and the reference model, and that
returns a ``FusedCausalLMOutput`` (log-probs and entropies of the next-token labels, never the logits).
:func:`use_semgrpo_loss` replaces that one mode on those models with semgrpo's fused head
(:func:`semgrpo.fused_head.forward_to_logprobs`, the head fusion semgrpo's own trainer runs): the model body, then
the LM head module projecting only the labelled positions with :func:`semgrpo.ops.linear_logprobs_and_entropy`,
which streams the vocabulary in fp32 tiles. Everything else stays TRL's own: ``_compute_loss`` with its loss
types, normalisers, masks, entropy bonus and metrics, generation (the models' other forward mode), and the old and
reference passes' place in the step. Because all three passes go through the same op, the first iteration's
importance ratio is exactly 1 and the KL against an unchanged reference exactly 0, also in bf16.

That is the whole patched surface: one forward mode of two models, whose contract (the call's arguments and the
output fields TRL reads) is fixed by TRL's own ``add_fused_lm_head``. Another TRL version may change it, so
:func:`use_semgrpo_loss` checks the version (:data:`SUPPORTED_TRL`) and refuses any other with one error.

The head fusion follows semgrpo's policy (semgrpo/fused_head.py): ZeRO-3 hooks fetch the head as for any
``nn.Linear`` (a head still partitioned is gathered, for the forward and the backward), an FSDP2 ``DTensor`` head is
materialised, a linear logit scale from the config is folded into the temperature. TRL's own mode runs instead,
with one :class:`SemgrpoFallbackWarning` per reason, for soft-capped logits (``final_logit_softcapping``, Gemma 2),
a logit scale that is not a positive number, a model without a separate body and ``nn.Linear`` head, MoE router
logits (the load-balancing loss comes from the body's router outputs) and multimodal inputs;
:func:`unsupported_reason` says which.

Numerics: in fp32 the log-probs equal TRL's up to summation order. With a bf16/fp16 model and
``cast_lm_head_to_fp32=False`` TRL rounds each logits tile to the autocast (or hidden) dtype, while semgrpo
multiplies in fp32 without rounding, so the two differ at that precision (semgrpo's values are the more
accurate); with ``cast_lm_head_to_fp32=True`` (recommended) both compute the head in fp32.
"""

from __future__ import annotations

import functools
import types
import warnings

from semgrpo.errors import UserError
from semgrpo.fused_head import causal_lm, forward_to_logprobs, unfusable_reason

# The TRL releases whose fused-head contract this module implements: [first, last-excluded).
SUPPORTED_TRL = ("1.16.0", "1.17.0")
_MULTIMODAL_KEYS = ("pixel_values", "image_grid_thw", "pixel_attention_mask", "image_sizes", "token_type_ids",
                    "mm_token_type_ids", "spatial_shapes", "num_tiles", "image_position_ids")
_MARK = "_semgrpo_previous_forward"  # on our forward: the fused forward TRL installed (the fallback)


class SemgrpoFallbackWarning(UserWarning):
    """semgrpo's head is not used for a model/batch; TRL's own fused head runs instead."""


class UnsupportedTRLError(UserError):
    """The installed TRL is outside :data:`SUPPORTED_TRL`."""


def check_trl_version(version: str) -> None:
    """Raise :class:`UnsupportedTRLError` unless `version` lies in :data:`SUPPORTED_TRL`."""
    from packaging.version import InvalidVersion, Version

    first, stop = SUPPORTED_TRL
    try:
        ok = Version(first) <= Version(version) < Version(stop)
    except InvalidVersion:
        ok = False
    if not ok:
        raise UnsupportedTRLError(
            f"semgrpo.integrations.trl supports trl >={first},<{stop} (it replaces the fused LM head that those "
            f"versions' GRPOTrainer adds to its models); found trl {version}: pip install 'trl>={first},<{stop}'")


def unsupported_reason(trainer, inputs: dict | None = None) -> str | None:
    """Why TRL's own fused head runs for this trainer (and batch `inputs`, when given), or None when semgrpo's does."""
    if getattr(trainer, "aux_loss_enabled", False):
        return "MoE router aux loss (router_aux_loss_coef != 0) needs the router logits of the full model output"
    reason = unfusable_reason(trainer.model)
    if reason is not None:
        return reason
    if inputs is not None and any(inputs.get(k) is not None for k in _MULTIMODAL_KEYS):
        return "multimodal inputs"
    return None


class _Patch:
    """What the replaced forward mode needs from the trainer, and its counters (``trainer._semgrpo_counts``)."""

    def __init__(self, trainer, backend):
        self.trainer, self.backend = trainer, backend
        self.warned: set[str] = set()
        self.counts = {"semgrpo": 0, "fallback": 0}

    def fallback_reason(self, lm, kwargs) -> str | None:
        if kwargs.get("output_router_logits") or getattr(lm.config, "output_router_logits", False):
            return "MoE router logits (the load-balancing loss) come from TRL's fused head"
        return unsupported_reason(self.trainer, kwargs)

    def warn_once(self, reason: str) -> None:
        if reason not in self.warned:
            self.warned.add(reason)
            warnings.warn(f"semgrpo's fused head not used ({reason}); TRL's runs instead", SemgrpoFallbackWarning,
                          stacklevel=4)


def _install(lm, patch: _Patch, *, with_entropy: bool) -> None:
    """Replace the ``fused_lm_head=True`` mode of causal LM `lm` (TRL's ``add_fused_lm_head``) by semgrpo's head."""
    previous = lm.__dict__.get("forward")
    if previous is None:
        raise TypeError(f"{type(lm).__name__} has no fused LM head from TRL (GRPOTrainer adds one when it is built)")
    previous = getattr(previous, _MARK, previous)  # installed before: wrap TRL's forward, not ours
    from trl.trainer.utils import FusedCausalLMOutput

    @functools.wraps(type(lm).forward)  # keeps the signature that `generate` validates its kwargs against
    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None,
                **kwargs):
        trl_call = {"labels": labels, "shift_labels": shift_labels, "num_items_in_batch": num_items_in_batch}
        if not fused_lm_head:
            return previous(*args, **{k: v for k, v in trl_call.items() if v is not None}, **kwargs)
        reason = patch.fallback_reason(self, kwargs)
        if reason is not None:
            patch.warn_once(reason)
            patch.counts["fallback"] += 1
            return previous(*args, fused_lm_head=True, **trl_call, **kwargs)
        patch.counts["semgrpo"] += 1
        # label t is the token position t predicts; pre-shifted labels (context parallelism) are taken as they are
        target = labels[:, 1:] if shift_labels is None else shift_labels
        on = target != -100
        logp, ent = forward_to_logprobs(
            self, args, kwargs, hidden_of=(lambda last: last[:, :-1]) if shift_labels is None else (lambda last: last),
            ids=target.clamp(min=0), on=on, temperature=patch.trainer.temperature, with_entropy=with_entropy,
            fp32=bool(getattr(patch.trainer.args, "cast_lm_head_to_fp32", False)), backend=patch.backend)
        on = on.to(logp.device)
        count = on.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(loss=-logp.sum() / count, log_probs=logp, entropy=ent if with_entropy else None,
                                   label_mask=on)

    setattr(forward, _MARK, previous)
    lm.forward = types.MethodType(forward, lm)


def use_semgrpo_loss(trainer, *, backend: str | None = None):
    """Make a TRL ``GRPOTrainer`` compute its log-probs (loss, old and reference) with semgrpo's fused head (see
    the module docstring).

    Args:
        trainer: A constructed ``trl.GRPOTrainer`` (or subclass), patched in place; calling it again only updates
            `backend`.
        backend: ``"triton"``/``"torch"`` forces the op's path; None or ``"auto"`` dispatches by device.

    Returns:
        The same trainer, for chaining. ``trainer._semgrpo_counts`` counts the fused-head calls that used semgrpo
        (``"semgrpo"``) and those that fell back to TRL's (``"fallback"``).

    Raises:
        UnsupportedTRLError: the installed trl is outside :data:`SUPPORTED_TRL`.
        TypeError: ``trainer`` is not a ``trl.GRPOTrainer``, or its models lack TRL's fused head.
        ValueError: unknown `backend`.
    """
    import trl

    check_trl_version(trl.__version__)
    if not isinstance(trainer, trl.GRPOTrainer):
        raise TypeError(f"use_semgrpo_loss expects a trl.GRPOTrainer, got {type(trainer).__name__}")
    if backend not in (None, "auto", "triton", "torch"):
        raise ValueError(f"backend must be None, 'auto', 'triton' or 'torch', got {backend!r}")
    patch = getattr(trainer, "_semgrpo", None)
    if patch is not None:
        patch.backend = backend
        return trainer
    patch = _Patch(trainer, backend)
    _install(causal_lm(trainer.model), patch, with_entropy=True)  # policy: TRL asks it for entropies too
    if getattr(trainer, "ref_model", None) is not None:
        _install(causal_lm(trainer.ref_model), patch, with_entropy=False)
    trainer._semgrpo, trainer._semgrpo_counts = patch, patch.counts
    return trainer
