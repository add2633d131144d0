"""The reproduction's base model: a small Qwen3 that knows some Chinese and Tibetan, and its reward encoder.

Built once per settings into ``<cache>/base-<hash>`` (like the demo assets: in a temporary sibling folder
renamed into place at the end, so an interrupted build leaves nothing half-made):

- a byte-level BPE trained on the pretraining text, a Tibetan syllable with its tsheg kept whole;
- a Qwen3-architecture policy pretrained from scratch as a plain causal LM on that text;
- its OOD NLL next to a unigram baseline (token frequencies of the pretraining text, add-one smoothed),
  on the same windows and predicted tokens that ``bin/evaluate.py`` scores;
- the reward encoder: a small BERT on the same tokenizer, adapted on the MT *train* pairs by
  ``bin/train_embedder.py``'s code, with its graded diagnostic on the dev pairs.
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

from reproduce.corpus import Corpus, data_paths, load_corpus

MARKER = "base_complete.json"
VERSION = 1  # bump when the build's code changes what it writes; part of the cache key


@dataclass(frozen=True)
class BaseSettings:
    """Everything that decides the base's bytes (the cache key); `config.yaml`'s ``base`` section."""

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
    heldout_fraction: float = 0.1
    max_chars: int = 0
    encoder_epochs: int = 10
    encoder_lr: float = 1.0e-3
    encoder_batch_size: int = 32
    encoder_pairs: int = 0  # 0 = every MT train pair (--quick uses a few)
    ood_max_tokens: int = 256
    ood_passages: int = 0  # 0 = every OOD passage (the base's NLL report; --quick uses a few)
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha256(json.dumps([VERSION, asdict(self)], sort_keys=True).encode()).hexdigest()[:12]


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
    def ood(self) -> Path:
        """OOD passages, one per line (``bin/evaluate.py --ood``)."""
        return self.root / "ood.txt"

    @property
    def summary(self) -> dict:
        return json.loads((self.root / MARKER).read_text(encoding="utf-8"))


def build_base(cache_dir: str | Path, settings: BaseSettings, *, data_dir: str | Path, log=print) -> BaseAssets:
    """The base for ``settings``, built unless the cache already holds a complete one."""
    cache = Path(cache_dir)
    root = cache / f"base-{settings.key()}"
    if (root / MARKER).is_file():
        log(f"base: cached at {root}")
        return BaseAssets(root)
    data_paths(data_dir)  # name a missing file before anything is built
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".build-{root.name}-", dir=cache))
    try:
        started = time.perf_counter()
        summary = _build_into(work, settings, data_dir=data_dir, log=log)
        summary["wall_seconds"] = round(time.perf_counter() - started, 1)
        (work / MARKER).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        shutil.rmtree(root, ignore_errors=True)  # a build without its marker is unfinished
        os.rename(work, root)
        log(f"base: built {root} in {summary['wall_seconds']:.0f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return BaseAssets(root)


def _build_into(work: Path, s: BaseSettings, *, data_dir: str | Path, log) -> dict:
    from semgrpo.demo.assets import SYLLABLE_TSHEG_PATTERN, build_policy, build_tokenizer
    from semgrpo.demo.tiny_encoder import build_tiny_encoder
    from semgrpo.demo.tiny_policy import pretrain_policy
    from semgrpo.embedder import train_embedder

    corpus = load_corpus(data_dir, heldout_fraction=s.heldout_fraction, max_chars=s.max_chars)
    log(f"base: corpus {len(corpus.chinese)} Chinese passages ({sum(map(len, corpus.chinese)):,} chars), "
        f"{len(corpus.tibetan)} Tibetan texts ({sum(map(len, corpus.tibetan)):,} chars); OOD {len(corpus.ood)} "
        f"passages ({corpus.heldout_articles} held-out DRCD articles + CMRC 2018 dev contexts)")
    (work / "ood.txt").write_text("\n".join(p.replace("\n", " ") for p in corpus.ood) + "\n", encoding="utf-8")

    tok_dir = work / "tokenizer"
    tokenizer = build_tokenizer(corpus.pretraining, tok_dir, vocab_size=s.vocab_size, pattern=SYLLABLE_TSHEG_PATTERN)
    build_policy(tokenizer, work / "policy", seed=s.seed, num_layers=s.num_layers, hidden_size=s.hidden_size,
                 intermediate_size=s.intermediate_size, num_heads=s.num_heads, num_kv_heads=s.num_kv_heads)
    log(f"base: tokenizer vocab {len(tokenizer)}; pretraining {s.epochs} epochs on {s.threads} threads")
    t0 = time.perf_counter()
    loss = pretrain_policy(work / "policy", tokenizer, corpus.pretraining, seed=s.seed, epochs=s.epochs,
                           batch_size=s.batch_size, lr=s.lr, pack_tokens=s.block_tokens, cosine=True,
                           num_threads=s.threads, log_epochs=True, log=lambda m: log(f"base: {m}"))
    pretrain_seconds = time.perf_counter() - t0
    # The pretraining text as token ids, once: the unigram baseline's counts and the token totals.
    pretraining_ids = tokenizer(corpus.pretraining, add_special_tokens=False)["input_ids"]
    ood = ood_nll(work / "policy", tokenizer, corpus, pretraining_ids, max_tokens=s.ood_max_tokens,
                  limit=s.ood_passages)
    log(f"base: OOD NLL {ood['base_nll']:.3f} nats/token vs unigram {ood['unigram_nll']:.3f} "
        f"({ood['tokens']:,} tokens of {ood['passages']} passages)")

    paths = data_paths(data_dir)
    train_pairs = [json.loads(line) for line in paths["mt_train"].read_text(encoding="utf-8").splitlines() if line]
    dev_pairs = [json.loads(line) for line in paths["mt_dev"].read_text(encoding="utf-8").splitlines() if line]
    init_dir = work / "encoder_init"
    encoder = build_tiny_encoder(tok_dir, init_dir, seed=s.seed)
    train_pairs = train_pairs[:s.encoder_pairs] if s.encoder_pairs else train_pairs
    diag = train_embedder(encoder, train_pairs, src_field="bo", tgt_field="zh", output_dir=work / "encoder",
                          epochs=s.encoder_epochs, batch_size=s.encoder_batch_size, lr=s.encoder_lr, seed=s.seed,
                          eval_pairs=dev_pairs, mono_field="bo", device="cpu", num_threads=1,
                          log=lambda m: log(f"encoder: {m}"))
    shutil.rmtree(init_dir)
    return {"settings": asdict(s), "vocab_size": len(tokenizer), "pretrain_loss": round(loss, 4),
            "pretrain_seconds": round(pretrain_seconds, 1), "pretrain_tokens": {
                "chinese": sum(map(len, pretraining_ids[:len(corpus.chinese)])),
                "tibetan": sum(map(len, pretraining_ids[len(corpus.chinese):]))},
            "ood": ood, "encoder": {"before": diag["before"], "after": diag["after"]}}


def ood_nll(policy_dir: Path, tokenizer, corpus: Corpus, pretraining_ids: list[list[int]], *, max_tokens: int,
            limit: int = 0) -> dict:
    """Mean NLL per predicted OOD token of the base and of a unigram model of the pretraining text.

    The windows and the predicted tokens are those of ``bin/evaluate.py`` (``semgrpo.eval.ood``); the
    unigram model counts every pretraining token (eos included) with add-one smoothing over the vocabulary.
    """
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from semgrpo.eval.models import logits_fn
    from semgrpo.eval.ood import drift_per_token, encode_windows

    windows = encode_windows(tokenizer, corpus.ood[:limit] if limit else corpus.ood, max_tokens=max_tokens)
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
            "tokens": len(targets), "passages": len(windows)}
