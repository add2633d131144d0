"""The reward of a batch: every configured component called with TRL's signature, its values checked, and their
weighted sum (paper eq. 4):

    R = w_sim * R_sim + w_lang * R_lang (+ w_bleu * BLEU + w_len * length)

None means "does not apply to this sample" and becomes NaN: the weighted sum ignores it (nansum), and a sample whose
every component is NaN gets NaN, which group_advantages turns into advantage 0.
"""
from __future__ import annotations

import decimal
import math
import numbers
import reprlib
from collections.abc import Callable, Sequence

import numpy as np
import torch

from semgrpo import dist
from semgrpo.errors import UserError

RewardFn = Callable[[Sequence[str], Sequence[str], Sequence[str]], list]


class RewardError(UserError):
    """A reward gave what the trainer cannot use (wrong count, not numbers) or its server failed."""


def score(functions: dict[str, RewardFn], weights: dict[str, float], prompts, completions, references,
          *, device=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted total reward and each component.

    Shape:
        returns total [N] fp32 (NaN where every component is None), and name -> [N] fp32
    """
    per_fn = {}
    for name, fn in functions.items():
        values = checked_values(name, fn(prompts, completions, references), len(completions))
        per_fn[name] = torch.tensor(values, dtype=torch.float32, device=device)
    stacked = torch.stack([per_fn[n] * weights.get(n, 1.0) for n in functions], dim=1)
    total = torch.nansum(stacked, dim=1)
    total[torch.isnan(stacked).all(dim=1)] = float("nan")
    return total, per_fn


def score_on_every_rank(functions, weights, prompts, completions, references, *, device=None):
    """`score`, collectively: a RewardError on any rank is raised on every rank (the lowest failing rank's
    message), so that no rank waits forever at the step's next collective while another has stopped."""
    error, result = None, None
    try:
        result = score(functions, weights, prompts, completions, references, device=device)
    except RewardError as exc:
        error = exc
    dist.raise_on_any_rank(error)
    return result


def checked_values(name: str, values, expected: int) -> list[float]:
    """A reward's values as floats (None and NaN -> NaN); anything else fails loudly, never as 0.

    Any real number is taken: Python's, numpy scalars, 0-d tensors and arrays, Fractions and Decimals. A value
    the trainer cannot use (an infinity, beyond float32, a bool, a string, a nested list, ...) is one
    RewardError naming the reward and the position, its value shown shortened.
    """
    if hasattr(values, "tolist") and not isinstance(values, (list, tuple)):  # numpy arrays, tensors
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        raise RewardError(f"reward {name!r} returned a {type(values).__name__}; expected a list of "
                          f"{expected} numbers or None")
    if len(values) != expected:
        raise RewardError(f"reward {name!r} returned {len(values)} values for {expected} completions")
    out = []
    for i, v in enumerate(values):
        value, refused = _real(v)
        if refused is not None:
            shown, why = refused
            raise RewardError(f"reward {name!r} returned {shown} at position {i}; expected a finite number or None"
                              + (f" ({why})" if why else ""))
        out.append(value)
    return out


# Rewards are summed in float32: a larger finite value would become an infinity there.
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)
_SHORT = reprlib.Repr()  # a refused value is shown cut short: it may be a megabyte of text or deeply nested
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlevel = 60, 60, 3


def _real(v) -> tuple[float, tuple[str, str] | None]:
    """(v as a float, None); or (nan, (v shown short, why it is refused)) when v is no usable real number."""
    if v is None:
        return math.nan, None
    if getattr(v, "ndim", None) == 0 and hasattr(v, "item"):  # a 0-d tensor or array
        v = v.item()
    if isinstance(v, (bool, np.bool_)):
        return math.nan, (repr(v), "return 1.0 / 0.0, not True / False")
    if not isinstance(v, (numbers.Real, decimal.Decimal)):
        return math.nan, (_SHORT.repr(v), "")
    try:
        value = float(v)
    except OverflowError:
        if isinstance(v, numbers.Integral):  # repr(v) itself fails beyond 4300 digits
            return math.nan, (f"an integer of about {int(math.log10(abs(v))) + 1} digits", "too large for a float")
        return math.nan, (_SHORT.repr(v), "too large for a float")
    except (TypeError, ValueError):  # a signalling Decimal NaN, a numeric type that refuses float()
        return math.nan, (_SHORT.repr(v), "")
    if math.isnan(value):
        return value, None
    if math.isinf(value):
        return math.nan, (repr(value), "")
    if abs(value) > _FLOAT32_MAX:
        return math.nan, (repr(value), "beyond the float32 range rewards are summed in")
    return value, None
