"""Offline demo assets: CLDR bo/zh term pairs, a BPE tokenizer, a tiny Qwen3 policy, a tiny reward encoder.

Everything comes from installed packages (``babel`` ships the CLDR data), so the demo needs no network.
``build_demo`` writes the assets once into a cache folder, atomically and deterministically::

    assets = build_demo(default_cache_dir(), seed=0)
    assets.train_path, assets.tokenizer_path, assets.policy_path, assets.encoder_path
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import regex

DEMO_VERSION = 4
EOS_TOKEN = "<|endoftext|>"
MARKER_NAME = "demo_complete.json"

# Characters that make up one Tibetan syllable: letters (incl. U+0F00 om and the U+0F88-0F8C sign letters),
# vowel signs, subjoined letters and combining marks. Tsheg, shad and other punctuation are not in it.
TIBETAN_SYLLABLE_CHARS = (
    "\u0f00\u0f18\u0f19\u0f35\u0f37\u0f39\u0f3e-\u0f47\u0f49-\u0f6c\u0f71-\u0f84\u0f86-\u0f97\u0f99-\u0fbc\u0fc6"
)
# Pre-tokenizer: a whole Tibetan syllable | one Han character | a run of spaces | a Latin word | a number.
# Anything else (tsheg, shad, other punctuation) becomes its own piece between the matches.
PRETOKENIZE_PATTERN = rf"[{TIBETAN_SYLLABLE_CHARS}]+|\p{{Han}}|\s+|\p{{Latin}}+|\p{{N}}+"
# The same with a syllable's trailing tsheg (U+0F0B) in its piece: about half the tokens on Tibetan text.
SYLLABLE_TSHEG_PATTERN = rf"[{TIBETAN_SYLLABLE_CHARS}]+\u0f0b?|\p{{Han}}|\s+|\p{{Latin}}+|\p{{N}}+"

_TIBETAN_LETTER = regex.compile(r"[\u0f40-\u0f6c]")
_HAN = regex.compile(r"\p{Han}")
_PLACEHOLDER = regex.compile(r"[{}]")


@dataclass(frozen=True)
class DemoAssets:
    """Paths of a built demo.

    Attributes:
        root: Folder holding everything below and the completion marker.
        train_path: JSONL of ``{"id", "bo", "zh"}`` training pairs.
        dev_path: JSONL of held-out pairs (about 10%).
        tokenizer_path: ``PreTrainedTokenizerFast`` directory.
        policy_path: ``Qwen3ForCausalLM`` directory (tokenizer saved beside it too).
        encoder_path: sentence-transformers directory of the reward encoder.
        ood_path: Plain Chinese text, a passage per line, for the alignment-tax meter.
    """

    root: Path
    train_path: Path
    dev_path: Path
    tokenizer_path: Path
    policy_path: Path
    encoder_path: Path
    ood_path: Path

    @classmethod
    def at(cls, root: Path) -> DemoAssets:
        """Assets laid out under ``root``."""
        root = Path(root)
        return cls(
            root=root,
            train_path=root / "train.jsonl",
            dev_path=root / "dev.jsonl",
            tokenizer_path=root / "tokenizer",
            policy_path=root / "policy",
            encoder_path=root / "encoder",
            ood_path=root / "ood.txt",
        )


def default_cache_dir() -> Path:
    """``$SEMGRPO_CACHE`` when set, else ``~/.cache/semgrpo/demo``."""
    env = os.environ.get("SEMGRPO_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "semgrpo" / "demo"


def _is_tibetan_term(bo: object, key: object) -> bool:
    return (
        isinstance(bo, str)
        and bool(_TIBETAN_LETTER.search(bo))
        and bo.strip() != str(key)
        and not _PLACEHOLDER.search(bo)
    )


def _is_chinese_term(zh: object) -> bool:
    return isinstance(zh, str) and bool(_HAN.search(zh)) and not _PLACEHOLDER.search(zh)


def _cldr_sources() -> list[tuple[str, dict, dict]]:
    """(category, bo mapping, zh mapping) for every CLDR category babel has in Tibetan."""
    from babel import Locale

    bo, zh = Locale("bo"), Locale("zh")

    def wide(data, context="format"):
        return dict(data[context]["wide"])

    def cities(locale):
        return {k: v.get("city") for k, v in locale.time_zones.items()}

    return [
        ("language", dict(bo.languages), dict(zh.languages)),
        ("territory", dict(bo.territories), dict(zh.territories)),
        ("script", dict(bo.scripts), dict(zh.scripts)),
        ("currency", dict(bo.currencies), dict(zh.currencies)),
        ("variant", dict(bo.variants), dict(zh.variants)),
        ("measurement", dict(bo.measurement_systems), dict(zh.measurement_systems)),
        ("month", wide(bo.months), wide(zh.months)),
        ("day", wide(bo.days), wide(zh.days)),
        ("quarter", wide(bo.quarters), wide(zh.quarters)),
        ("era", dict(bo.eras["wide"]), dict(zh.eras["wide"])),
        ("city", cities(bo), cities(zh)),
    ]


def cldr_pairs() -> list[dict]:
    """Genuine Tibetan/Chinese term pairs from the CLDR data shipped with ``babel``.

    A pair is kept when both locales name the same key, the Tibetan side contains Tibetan letters and is
    not just the key (CLDR falls back to the code or to English where a translation is missing), and the
    Chinese side contains Han characters. Duplicates are dropped: a Tibetan or Chinese string already
    used by an earlier id (in id order) is not used again, so every reference is unambiguous.

    Returns:
        Records ``{"id": "<category>:<key>", "bo": str, "zh": str}`` sorted by id.

    Raises:
        RuntimeError: When babel yields fewer than 250 pairs (an old babel or trimmed CLDR data).
    """
    candidates = []
    for category, bo_map, zh_map in _cldr_sources():
        for key, bo_text in bo_map.items():
            zh_text = zh_map.get(key)
            if _is_tibetan_term(bo_text, key) and _is_chinese_term(zh_text):
                candidates.append({"id": f"{category}:{key}", "bo": bo_text.strip(), "zh": zh_text.strip()})
    candidates.sort(key=lambda r: r["id"])
    seen_bo, seen_zh, pairs = set(), set(), []
    for rec in candidates:
        if rec["bo"] in seen_bo or rec["zh"] in seen_zh:
            continue
        seen_bo.add(rec["bo"])
        seen_zh.add(rec["zh"])
        pairs.append(rec)
    if len(pairs) < 250:
        import babel

        raise RuntimeError(
            f"babel {babel.__version__} has only {len(pairs)} Tibetan/Chinese CLDR pairs; the demo expects "
            "at least 250 (install a recent babel)"
        )
    return pairs


def cldr_chinese_passages(*, names_per_passage: int = 16) -> list[str]:
    """Plain Chinese text for the demo's alignment-tax meter: every CLDR Chinese name, joined into lines.

    No instruction format and no Tibetan: the dominant-language behaviour of the base model that the
    MT fine-tuning should leave alone (the demo's stand-in for the paper's CMRC passages).
    """
    names = []
    for _, _, zh_map in _cldr_sources():
        names += [v.strip() for _, v in sorted(zh_map.items(), key=lambda kv: str(kv[0])) if _is_chinese_term(v)]
    names = list(dict.fromkeys(names))
    return ["、".join(names[i:i + names_per_passage]) + "。" for i in range(0, len(names), names_per_passage)]


def split_pairs(pairs: list[dict], *, seed: int, dev_fraction: float = 0.1) -> tuple[list[dict], list[dict]]:
    """Deterministic train/dev split: shuffle with ``seed``, take ``dev_fraction`` for dev, sort both by id."""
    if not 0.0 < dev_fraction < 1.0:
        raise ValueError(f"dev_fraction must be in (0, 1), got {dev_fraction!r}")
    order = sorted(pairs, key=lambda r: r["id"])
    random.Random(seed).shuffle(order)
    n_dev = max(1, round(len(order) * dev_fraction))
    dev, train = order[:n_dev], order[n_dev:]
    return sorted(train, key=lambda r: r["id"]), sorted(dev, key=lambda r: r["id"])


def _write_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps({"id": rec["id"], "bo": rec["bo"], "zh": rec["zh"]}, ensure_ascii=False) + "\n")


def build_tokenizer(texts: list[str], output_dir: str | Path, *, vocab_size: int = 1536,
                    pattern: str = PRETOKENIZE_PATTERN):
    """Train a byte-level BPE on ``texts`` and save it as a ``PreTrainedTokenizerFast`` directory.

    The pre-tokenizer keeps a Tibetan syllable whole (letters, vowel signs, subjoined letters), isolates
    tsheg/shad and spaces, and splits Chinese per character; BPE merges never cross those pieces. Bytes
    come after the split, so any text encodes without an unknown token. ``<|endoftext|>`` is eos and pad.

    Args:
        texts: Training corpus.
        output_dir: Where to save.
        vocab_size: Upper bound of the vocabulary (the small demo corpus may give fewer merges).
        pattern: Pre-tokenizer regex; its matches and the text between them are the pieces BPE merges
            within (``SYLLABLE_TSHEG_PATTERN`` lets a syllable and its tsheg become one token).

    Returns:
        The saved ``PreTrainedTokenizerFast``.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 300:
        raise ValueError(f"vocab_size must be >= 300 (256 bytes + specials + merges), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN, model_max_length=512
    )
    fast.save_pretrained(str(output_dir))
    return fast


def build_policy(tokenizer, output_dir: str | Path, *, seed: int, num_layers: int = 2, hidden_size: int = 128,
                 intermediate_size: int = 256, num_heads: int = 4, num_kv_heads: int = 2):
    """Random-initialise a small ``Qwen3ForCausalLM`` sized to ``tokenizer`` and save it (+ tokenizer).

    Demo size by default: hidden 128, 2 layers, 4 query heads and 2 kv heads of dim 32, MLP 256, tied
    embeddings. Heads always have dim ``hidden_size // num_heads``.
    """
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    eos = tokenizer.eos_token_id
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=bos, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(str(output_dir))
    tokenizer.save_pretrained(str(output_dir))
    return model


def _marker_ok(root: Path, seed: int, pretrain_epochs: int = 20) -> bool:
    try:
        marker = json.loads((root / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    # A marker without the key predates it: such builds all pretrained the policy for the default 20 epochs.
    return (marker.get("version") == DEMO_VERSION and marker.get("seed") == seed
            and marker.get("pretrain_epochs", 20) == pretrain_epochs)


def _build_into(work: Path, *, seed: int, encoder_epochs: int, log: Callable[[str], None],
                pretrain_epochs: int = 20) -> dict:
    from semgrpo.demo.tiny_encoder import build_tiny_encoder
    from semgrpo.demo.tiny_policy import pretrain_policy
    from semgrpo.embedder import train_embedder

    assets = DemoAssets.at(work)
    pairs = cldr_pairs()
    train, dev = split_pairs(pairs, seed=seed)
    _write_jsonl(assets.train_path, train)
    _write_jsonl(assets.dev_path, dev)
    log(f"demo: {len(pairs)} CLDR bo/zh pairs -> {len(train)} train, {len(dev)} dev")
    assets.ood_path.write_text("\n".join(cldr_chinese_passages()) + "\n", encoding="utf-8")

    corpus = [r["bo"] for r in train] + [r["zh"] for r in train]
    tokenizer = build_tokenizer(corpus, assets.tokenizer_path)
    log(f"demo: tokenizer vocab {len(tokenizer)}")
    build_policy(tokenizer, assets.policy_path, seed=seed)
    # Monolingual terms plus the training pairs as plain parallel text (never the dev pairs).
    parallel = [f"{r['zh']} {r['bo']}" for r in train]
    base_loss = pretrain_policy(assets.policy_path, tokenizer, corpus + parallel, seed=seed,
                                epochs=pretrain_epochs, log=log)

    init_dir = work / "encoder_init"
    encoder = build_tiny_encoder(assets.tokenizer_path, init_dir, seed=seed)
    diag = train_embedder(
        encoder,
        train,
        src_field="bo",
        tgt_field="zh",
        output_dir=assets.encoder_path,
        epochs=encoder_epochs,
        batch_size=32,
        lr=1e-3,
        seed=seed,
        eval_pairs=dev,
        mono_field="bo",
        device="cpu",  # same bytes on every machine; a GPU gains nothing on a model this small
        num_threads=1,
        log=log,
    )
    shutil.rmtree(init_dir)
    return {
        "version": DEMO_VERSION,
        "seed": seed,
        "pretrain_epochs": pretrain_epochs,
        "num_pairs": len(pairs),
        "num_train": len(train),
        "num_dev": len(dev),
        "vocab_size": len(tokenizer),
        "base_policy_loss": round(base_loss, 4),
        "encoder": {"before": diag["before"], "after": diag["after"]},
    }


def build_demo(
    cache_dir: str | Path | None = None,
    *,
    seed: int = 0,
    encoder_epochs: int = 12,
    pretrain_epochs: int = 20,
    log: Callable[[str], None] = print,
) -> DemoAssets:
    """Build the offline demo assets once into ``cache_dir`` and return their paths.

    The assets go to ``<cache_dir>/v<version>-seed<seed>`` (``-pretrain<pretrain_epochs>`` appended when
    that is not the default 20); when that folder holds a completion marker with the same version, seed
    and pretraining epochs nothing is rebuilt. A build happens in a temporary sibling folder
    that is renamed into place at the end, so a crash never leaves a half-built demo, and concurrent
    builders (one per rank) agree on whichever finished first. Same seed -> byte-identical files.

    Args:
        cache_dir: Cache folder; ``None`` -> ``default_cache_dir()``.
        seed: Seed of the split, the policy initialisation and the encoder training.
        encoder_epochs: Epochs of contrastive training of the tiny reward encoder.
        pretrain_epochs: Epochs of causal-LM pretraining of the base policy. Fewer than the default give a
            weaker policy in a folder of its own (for tests where its quality does not matter).
        log: Progress sink.

    Returns:
        The paths of the built demo.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if not isinstance(encoder_epochs, int) or encoder_epochs < 1:
        raise ValueError(f"encoder_epochs must be a positive int, got {encoder_epochs!r}")
    if not isinstance(pretrain_epochs, int) or isinstance(pretrain_epochs, bool) or pretrain_epochs < 1:
        raise ValueError(f"pretrain_epochs must be a positive int, got {pretrain_epochs!r}")
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    suffix = "" if pretrain_epochs == 20 else f"-pretrain{pretrain_epochs}"  # a short build never passes for the demo
    root = cache / f"v{DEMO_VERSION}-seed{seed}{suffix}"
    if _marker_ok(root, seed, pretrain_epochs):
        return DemoAssets.at(root)

    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".build-{root.name}-", dir=cache))
    os.chmod(work, 0o755)  # mkdtemp makes it private; the cache may be shared
    try:
        start = time.perf_counter()
        summary = _build_into(work, seed=seed, encoder_epochs=encoder_epochs,
                              pretrain_epochs=pretrain_epochs, log=log)
        (work / MARKER_NAME).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if root.exists() and not _marker_ok(root, seed, pretrain_epochs):
            shutil.rmtree(root, ignore_errors=True)  # a stale or foreign build: replace it
        try:
            os.rename(work, root)
        except OSError:
            if not _marker_ok(root, seed, pretrain_epochs):  # lost a race to a builder that did not finish either
                raise
        log(f"demo: built {root} in {time.perf_counter() - start:.1f}s")
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return DemoAssets.at(root)
