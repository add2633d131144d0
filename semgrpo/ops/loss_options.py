"""The options of the GRPO loss, written once: :class:`LossOptions`.

``grpo_loss``, ``linear_grpo_loss`` and ``policy_loss_from_logps`` take them either as one ``options=LossOptions(...)``
or as keywords of the same names (``beta=0.04, loss_type="dapo"``), the way their callers always passed them;
:func:`takes_loss_options` lists the fields in each function's signature, so ``help()`` and IDEs show them. The
trainer builds one ``LossOptions`` from its config (the config keys have the same names). What belongs to one
batch rather than to the run (``old_logps``, ``vllm_is_ratio``, ``num_items_in_batch``) stays an argument of the
call.
"""

from __future__ import annotations

import dataclasses
import inspect
import math

# The choices live with the config keys of the same names (semgrpo/config/choices.py), re-exported here.
from semgrpo.config.choices import IMPORTANCE_SAMPLING_LEVELS, TRL_LOSS_TYPES

__all__ = ["IMPORTANCE_SAMPLING_LEVELS", "TRL_LOSS_TYPES", "LossOptions", "takes_loss_options"]


def _is_number(x) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, float))


@dataclasses.dataclass(frozen=True)
class LossOptions:
    """How the GRPO loss is computed (TRL 1.16's ``GRPOConfig`` names, except ``eps_low``/``eps_high`` for its
    ``epsilon``/``epsilon_high``). Checked when built: a bad value raises ValueError (TypeError for a wrong type)
    naming the field.

    Attributes:
        temperature: Divides the logits before the softmax (the log-prob ops; ``policy_loss_from_logps`` takes
            log-probs that are already tempered and ignores it).
        eps_low, eps_high: Clip range ``[1 - eps_low, 1 + eps_high]``; for cispo ``eps_high`` is the absolute cap
            of the ratio (TRL's ``epsilon_high``).
        beta: KL coefficient (k3 against ``ref_logps``).
        loss_type: One of :data:`TRL_LOSS_TYPES`.
        importance_sampling_level: ``"token"`` or ``"sequence"`` (GSPO: one ratio per sequence, the exp of the
            mean log-ratio).
        delta: Upper bound of the unclipped ratio (two-sided clipping) for the clip loss types; None = off.
        use_bias_correction_kl: Multiply the per-token KL by the importance ratio (TRL 1.16's default is True;
            the ops keep False, their behaviour before the option existed).
        max_completion_length: dr_grpo's denominator length; None = the batch's T.
        sapo_temperature_pos, sapo_temperature_neg: SAPO's gate temperatures for positive / other advantages.
        vespo_k_pos, vespo_lambda_pos, vespo_k_neg, vespo_lambda_neg: VESPO's gamma weight parameters for
            non-negative / negative advantages.
    """

    temperature: float = 1.0
    eps_low: float = 0.2
    eps_high: float = 0.2
    beta: float = 0.0
    loss_type: str = "grpo"
    importance_sampling_level: str = "token"
    delta: float | None = None
    use_bias_correction_kl: bool = False
    max_completion_length: int | None = None
    sapo_temperature_pos: float = 1.0
    sapo_temperature_neg: float = 1.05
    vespo_k_pos: float = 2.0
    vespo_lambda_pos: float = 3.0
    vespo_k_neg: float = 3.0
    vespo_lambda_neg: float = 2.0

    def __post_init__(self):
        for name in ("temperature", "sapo_temperature_pos", "sapo_temperature_neg"):
            self._number(name, lambda v: 0 < v < math.inf, "a finite number > 0")
        for name in ("eps_low", "eps_high", "beta"):
            self._number(name, lambda v: 0 <= v < math.inf, "a finite number >= 0")
        if self.eps_low >= 1:
            raise ValueError(f"eps_low must be < 1 so that 1 - eps_low > 0, got {self.eps_low!r}")
        for name in ("vespo_k_pos", "vespo_lambda_pos", "vespo_k_neg", "vespo_lambda_neg"):
            self._number(name, math.isfinite, "a finite number")
        if self.delta is not None:
            self._number("delta", lambda v: 0 < v < math.inf, "a finite number > 0 or None")
        if self.loss_type not in TRL_LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {TRL_LOSS_TYPES}, got {self.loss_type!r}")
        if self.importance_sampling_level not in IMPORTANCE_SAMPLING_LEVELS:
            raise ValueError(f"importance_sampling_level must be one of {IMPORTANCE_SAMPLING_LEVELS}, "
                             f"got {self.importance_sampling_level!r}")
        if not isinstance(self.use_bias_correction_kl, (bool, int)) or self.use_bias_correction_kl not in (0, 1):
            raise TypeError(f"use_bias_correction_kl must be True or False, got {self.use_bias_correction_kl!r}")
        object.__setattr__(self, "use_bias_correction_kl", bool(self.use_bias_correction_kl))
        n = self.max_completion_length
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"max_completion_length must be an int >= 1 or None, got {n!r}")

    def _number(self, name: str, ok, expected: str) -> None:
        """Check a numeric field and store it as a float (so equal options compare and hash equal)."""
        value = getattr(self, name)
        if not _is_number(value):
            raise (ValueError if isinstance(value, bool) else TypeError)(
                f"{name} must be {expected}, got {value!r}")
        if not ok(value):
            raise ValueError(f"{name} must be {expected}, got {value!r}")
        object.__setattr__(self, name, float(value))

    @classmethod
    def resolve(cls, options: LossOptions | None, values: dict, caller: str) -> LossOptions:
        """`options` (default: LossOptions()) with the keyword `values` applied on top; an unknown keyword is the
        TypeError Python gives for one."""
        unknown = sorted(set(values) - FIELD_NAMES)
        if unknown:
            raise TypeError(f"{caller}() got an unexpected keyword argument {unknown[0]!r}")
        if options is None:
            return cls(**values)
        if not isinstance(options, cls):
            raise TypeError(f"options must be a LossOptions, got {type(options).__name__}")
        return dataclasses.replace(options, **values) if values else options


FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(LossOptions))


def takes_loss_options(fn):
    """Give `fn`, which takes ``options=None, **option_values``, a signature that lists every LossOptions field as
    a keyword-only parameter with its default (what ``help(fn)`` and ``inspect.signature`` show)."""
    sig = inspect.signature(fn)
    params = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    params += [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
               for f in dataclasses.fields(LossOptions)]
    fn.__signature__ = sig.replace(parameters=params)
    return fn
