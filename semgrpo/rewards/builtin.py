"""The built-in reward components (paper 3.4): R_sim, R_lang, and the BLEU and length ablations.

Each has the TRL shape `(prompts, completions, references) -> list[float]`, so any of them can be handed to another
trainer; `reward.functions` names them `semantic`, `language`, `bleu` and `length`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from semgrpo.ops import semantic_reward
from semgrpo.script import script_consistent


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
