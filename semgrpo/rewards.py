"""Reward functions (paper 3.4) and their weighted sum.

Each function has the TRL shape `(prompts, completions, references) -> list[float | None]`, so any of
them can be handed to another trainer. Beside the built-ins below, `reward.functions` takes a plugin
callable (reward_plugins.py) and a remote reward server (reward_remote.py). None means "does
not apply to this sample" and becomes NaN: the weighted sum ignores it (nansum), and a sample whose every
component is NaN gets NaN, which group_advantages turns into advantage 0.

    R = w_sim * R_sim + w_lang * R_lang (+ w_bleu * BLEU + w_len * length)       (paper eq. 4)
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
from semgrpo.config import ConfigError, RewardConfig
from semgrpo.config.reward_specs import reward_specs
from semgrpo.errors import UserError
from semgrpo.ops import semantic_reward
from semgrpo.script import script_consistent

RewardFn = Callable[[Sequence[str], Sequence[str], Sequence[str]], list]


class SemanticSimilarity:
    """R_sim: cosine of the frozen encoder's embeddings, thresholded at tau and rescaled (eq. 1-2)."""

    def __init__(self, encoder, *, tau: float | None = None, batch_size: int = 256):
        self.encoder = encoder
        self.tau = tau
        self.batch_size = batch_size
        self.__name__ = "semantic"

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        return self.encoder.encode(list(texts), batch_size=self.batch_size, convert_to_tensor=True,
                                   normalize_embeddings=False, show_progress_bar=False)

    def similarity(self, completions: Sequence[str], references: Sequence[str]) -> torch.Tensor:
        """Raw cosine s per sample; an empty completion has similarity 0 (it says nothing)."""
        return self._scored(completions, references, tau=0.0)[1]

    def _scored(self, completions, references, *, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(R_sim, s) from the fused op: cosine and the threshold-rescale at `tau` happen there.

        A GRPO group repeats its reference G times, so each distinct reference is encoded once and its
        embedding reused for every row that has it. An empty completion's embedding is zeroed, which the
        op scores as s = 0 (a zero vector is normalized to zero, not NaN).
        """
        distinct = list(dict.fromkeys(references))
        row_of = {text: i for i, text in enumerate(distinct)}
        c, r = self.embed(completions), self.embed(distinct)
        r = r[torch.tensor([row_of[text] for text in references], dtype=torch.long, device=r.device)]
        empty = torch.tensor([not s.strip() for s in completions], dtype=torch.bool, device=c.device)
        c = c.masked_fill(empty[:, None], 0.0)
        no_lang = torch.zeros(len(completions), device=c.device)
        # w_lang=0: R_lang is its own reward function, weighted in `score` like every other component
        return semantic_reward(c, r, no_lang, tau=tau, w_sim=1.0, w_lang=0.0)

    def __call__(self, prompts, completions, references) -> list[float]:
        if self.tau is None:
            raise RuntimeError("SemanticSimilarity.tau is unset: measure it (reward.tau=auto) or set a number")
        r_sim, _ = self._scored(completions, references, tau=float(self.tau))
        return r_sim.float().cpu().tolist()


class LanguageConsistency:
    """R_lang: 1 when the completion is in the target script and not mixed, else 0 (eq. 3)."""

    def __init__(self, script: str, *, min_ratio: float = 1.0, max_foreign: int = 0):
        self.script, self.min_ratio, self.max_foreign = script, min_ratio, max_foreign
        self.__name__ = "language"

    def __call__(self, prompts, completions, references) -> list[float]:
        ok = script_consistent(list(completions), script=self.script, min_ratio=self.min_ratio,
                               max_foreign=self.max_foreign)
        return [float(x) for x in ok]


class SentenceBLEU:
    """Sentence BLEU / 100 (ablation), on the units of the output script as the evaluation's BLEU counts them
    (`semgrpo.eval.metrics.sentence_bleu`: Chinese with sacrebleu's zh tokenizer, Tibetan syllables, ...)."""

    def __init__(self, script: str):
        self.script = script
        self.__name__ = "bleu"

    def __call__(self, prompts, completions, references) -> list[float]:
        from semgrpo.eval.metrics import sentence_bleu

        return [sentence_bleu(hyp, ref, script=self.script) / 100.0 for hyp, ref in zip(completions, references)]


class LengthConstraint:
    """1 when len(completion)/len(reference) in characters lies in [lo, hi], else 0 (ablation)."""

    def __init__(self, lo: float, hi: float):
        self.lo, self.hi = lo, hi
        self.__name__ = "length"

    def __call__(self, prompts, completions, references) -> list[float]:
        return [float(self.lo <= len(c.strip()) / max(1, len(r.strip())) <= self.hi)
                for c, r in zip(completions, references)]


class RewardError(UserError):
    """A reward gave what the trainer cannot use (wrong count, not numbers) or its server failed."""


def build_reward_functions(cfg: RewardConfig, *, encoder, script: str) -> dict[str, RewardFn]:
    """The configured components, in config order, keyed by name (plugins imported, classes built once)."""
    from semgrpo.reward_plugins import load_plugin

    tau = None if cfg.tau == "auto" else float(cfg.tau)
    makers = {
        "semantic": lambda: SemanticSimilarity(encoder, tau=tau, batch_size=cfg.encoder_batch_size),
        "language": lambda: LanguageConsistency(script, min_ratio=cfg.min_script_ratio,
                                                max_foreign=cfg.max_foreign),
        "bleu": lambda: SentenceBLEU(script),
        "length": lambda: LengthConstraint(cfg.length_ratio_min, cfg.length_ratio_max),
    }
    if "semantic" in cfg.functions and encoder is None:
        raise ConfigError("reward.functions has 'semantic' but reward.encoder is not set")
    functions = {}
    for spec in reward_specs(cfg.functions):  # the config checks already named a bad entry
        if spec.kind == "builtin":
            functions[spec.name] = makers[spec.name]()
        elif spec.kind == "plugin":
            functions[spec.name] = load_plugin(spec, cfg.kwargs.get(spec.name, {}))
        else:
            from semgrpo.reward_remote import RemoteReward

            functions[spec.name] = RemoteReward(spec.target, name=spec.name, timeout=cfg.remote_timeout,
                                                retries=cfg.remote_retries, max_bytes=cfg.remote_max_bytes)
    return functions


def score(functions: dict[str, RewardFn], weights: dict[str, float], prompts, completions, references,
          *, device=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted total reward and each component.

    Shape:
        returns total [N] fp32 (NaN where every component is None), and name -> [N] fp32
    """
    per_fn = {}
    for name, fn in functions.items():
        values = _checked_values(name, fn(prompts, completions, references), len(completions))
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


def _checked_values(name: str, values, expected: int) -> list[float]:
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
