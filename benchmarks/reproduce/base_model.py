"""The reproduction's base model: a small Qwen3 that knows some Chinese and Tibetan, and two sentence encoders.

Built once per settings *and data* into ``<cache>/base-<hash>`` (in a temporary sibling folder renamed into
place at the end, so an interrupted build leaves nothing half-made):

- a byte-level BPE trained on the pretraining text, a Tibetan syllable with its tsheg kept whole;
- a Qwen3-architecture policy pretrained from scratch as a plain causal LM on that text, in blocks of
  `block_tokens` (OOD windows are never longer: positions the base never trained on would inflate every NLL);
- its NLL on the OOD select and test windows next to a unigram model of the pretraining text (the gate's
  first half: the base must know something to forget);
- the reward encoder, a small BERT on the same tokenizer adapted with `bin/train_embedder.py`'s code on its
  pairs, and an independent encoder (another seed, disjoint pairs) for a similarity GRPO never optimised.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

MARKER = "base_complete.json"
VERSION = 2  # bump when the build's code changes what it writes; part of the cache key


@dataclass(frozen=True)
class BaseSettings:
    """Everything in the config that decides the base's bytes (with the data, the cache key)."""

    vocab_size: int = 6000
    hidden_size: int = 192
    num_layers: int = 4
    intermediate_size: int = 512
    num_heads: int = 4
    num_kv_heads: int = 2
    epochs: int = 2
    batch_size: int = 32
    lr: float = 3.0e-3
    block_tokens: int = 128
    threads: int = 2
    encoder_epochs: int = 10
    encoder_lr: float = 1.0e-3
    encoder_batch_size: int = 32
    seed: int = 0


@dataclass(frozen=True)
class BaseInputs:
    """The data a base is built from (files under the work folder's data/)."""

    pretraining: list[str]
    reward_encoder_pairs: list[dict]
    independent_encoder_pairs: list[dict]
    diagnostic_pairs: list[dict]  # the select pairs: the encoders' graded check, never trained on
    ood: dict[str, list[str]]  # {"select": [...], "test": [...]}

    def digest(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps([self.pretraining, self.reward_encoder_pairs, self.independent_encoder_pairs,
                             self.diagnostic_pairs, self.ood], ensure_ascii=False, sort_keys=True).encode())
        return h.hexdigest()


@dataclass(frozen=True)
class BaseAssets:
    root: Path

    @property
    def policy(self) -> Path:
        return self.root / "policy"

    @property
    def encoder(self) -> Path:
        return self.root / "encoder"

    @property
    def independent_encoder(self) -> Path:
        return self.root / "independent_encoder"

    @property
    def summary(self) -> dict:
        return json.loads((self.root / MARKER).read_text(encoding="utf-8"))


def base_key(settings: BaseSettings, inputs: BaseInputs) -> str:
    return hashlib.sha256(json.dumps([VERSION, asdict(settings), inputs.digest()]).encode()).hexdigest()[:12]


def build_base(cache_dir: str | Path, settings: BaseSettings, inputs: BaseInputs, *, log=print) -> BaseAssets:
    """The base for `settings` and `inputs`, built unless the cache already holds a complete one."""
    cache = Path(cache_dir)
    root = cache / f"base-{base_key(settings, inputs)}"
    if (root / MARKER).is_file():
        log(f"base: cached at {root}")
        return BaseAssets(root)
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".build-{root.name}-", dir=cache))
    try:
        started = time.perf_counter()
        summary = _build_into(work, settings, inputs, log=log)
        summary["wall_seconds"] = round(time.perf_counter() - started, 1)
        (work / MARKER).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        shutil.rmtree(root, ignore_errors=True)  # a build without its marker is unfinished
        os.rename(work, root)
        log(f"base: built {root} in {summary['wall_seconds']:.0f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return BaseAssets(root)


def _build_into(work: Path, s: BaseSettings, inputs: BaseInputs, *, log) -> dict:
    from semgrpo.demo.assets import SYLLABLE_TSHEG_PATTERN, build_policy, build_tokenizer
    from semgrpo.demo.tiny_policy import pretrain_policy

    tok_dir = work / "tokenizer"
    tokenizer = build_tokenizer(inputs.pretraining, tok_dir, vocab_size=s.vocab_size, pattern=SYLLABLE_TSHEG_PATTERN)
    build_policy(tokenizer, work / "policy", seed=s.seed, num_layers=s.num_layers, hidden_size=s.hidden_size,
                 intermediate_size=s.intermediate_size, num_heads=s.num_heads, num_kv_heads=s.num_kv_heads)
    log(f"base: tokenizer vocab {len(tokenizer)}; pretraining {s.epochs} epochs on {s.threads} threads")
    t0 = time.perf_counter()
    loss = pretrain_policy(work / "policy", tokenizer, inputs.pretraining, seed=s.seed, epochs=s.epochs,
                           batch_size=s.batch_size, lr=s.lr, pack_tokens=s.block_tokens, cosine=True,
                           num_threads=s.threads, log_epochs=True, log=lambda m: log(f"base: {m}"))
    pretrain_seconds = time.perf_counter() - t0
    pretraining_ids = tokenizer(inputs.pretraining, add_special_tokens=False)["input_ids"]
    ood = {name: ood_nll(work / "policy", tokenizer, passages, pretraining_ids, max_tokens=s.block_tokens)
           for name, passages in inputs.ood.items()}
    for name, r in ood.items():
        log(f"base: OOD {name} NLL {r['base_nll']:.3f} nats/token vs unigram {r['unigram_nll']:.3f} "
            f"({r['tokens']:,} tokens of {r['passages']} passages)")
    encoders = {}
    for name, pairs, seed in (("encoder", inputs.reward_encoder_pairs, s.seed),
                              ("independent_encoder", inputs.independent_encoder_pairs, s.seed + 1)):
        encoders[name] = _encoder(work, tok_dir, name, pairs, inputs.diagnostic_pairs, s, seed, log)
    return {"vocab_size": len(tokenizer), "pretrain_loss": round(loss, 4),
            "pretrain_seconds": round(pretrain_seconds, 1),
            "pretrain_tokens": sum(map(len, pretraining_ids)), "ood": ood, "encoders": encoders}


def _encoder(work: Path, tok_dir: Path, name: str, pairs: list[dict], diagnostic: list[dict], s: BaseSettings,
             seed: int, log) -> dict:
    from semgrpo.demo.tiny_encoder import build_tiny_encoder
    from semgrpo.embedder import train_embedder

    init_dir = work / f"{name}_init"
    encoder = build_tiny_encoder(tok_dir, init_dir, seed=seed)
    diag = train_embedder(encoder, pairs, src_field="bo", tgt_field="zh", output_dir=work / name,
                          epochs=s.encoder_epochs, batch_size=s.encoder_batch_size, lr=s.encoder_lr, seed=seed,
                          eval_pairs=diagnostic, mono_field="bo", device="cpu", num_threads=1,
                          log=lambda m: log(f"{name}: {m}"))
    shutil.rmtree(init_dir)
    return {"pairs": len(pairs), "seed": seed, "before": diag["before"], "after": diag["after"]}


def ood_nll(policy_dir: Path, tokenizer, passages: list[str], pretraining_ids: list[list[int]], *,
            max_tokens: int) -> dict:
    """Mean NLL per predicted OOD token of the base and of a unigram model of the pretraining text.

    The windows and the predicted tokens are those of ``bin/evaluate.py`` (``semgrpo.eval.ood``); the
    unigram model counts every pretraining token (eos included) with add-one smoothing over the vocabulary.
    """
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from semgrpo.eval.models import logits_fn
    from semgrpo.eval.ood import drift_per_token, encode_windows

    windows = encode_windows(tokenizer, passages, max_tokens=max_tokens)
    model = AutoModelForCausalLM.from_pretrained(str(policy_dir), dtype=torch.float32).eval()
    fn = logits_fn(model)
    base = drift_per_token(fn, fn, windows, pad_id=tokenizer.pad_token_id)["nll_base"]
    counts = Counter()
    for ids in pretraining_ids:
        counts.update(ids)
        counts[tokenizer.eos_token_id] += 1
    total, vocab = sum(counts.values()), len(tokenizer)
    targets = [t for w in windows for t in w[1:]]
    unigram = np.array([-math.log((counts[t] + 1) / (total + vocab)) for t in targets])
    return {"base_nll": round(float(base.mean()), 4), "unigram_nll": round(float(unigram.mean()), 4),
            "gap": round(float(unigram.mean() - base.mean()), 4), "tokens": len(targets),
            "passages": len(windows)}
