"""The demo's reward encoder before adaptation: a small BERT built from scratch on the demo tokenizer.

`bin/train_embedder.py` (semgrpo.embedder) then adapts it on the demo's pairs, as a real run adapts CINO.
"""
from __future__ import annotations

from pathlib import Path

import torch

from semgrpo.embedder import EmbedderInputError


def build_tiny_encoder(
    tokenizer_path: str | Path,
    output_dir: str | Path,
    *,
    seed: int = 0,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 256,
    max_length: int = 64,
):
    """A from-scratch ``BertModel`` encoder on ``tokenizer_path`` with mean pooling and normalisation.

    The random-initialised base model and tokenizer are saved to ``output_dir`` (the sentence-transformers
    ``Transformer`` module loads from a directory).

    Returns:
        An untrained ``SentenceTransformer`` (Transformer -> mean Pooling -> Normalize).
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path))
    if tokenizer.pad_token_id is None:
        raise EmbedderInputError(f"tokenizer at {tokenizer_path} has no pad token")
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max(128, max_length),
        type_vocab_size=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(str(output_dir))
    tokenizer.save_pretrained(str(output_dir))
    transformer = Transformer(str(output_dir), max_seq_length=max_length)
    return SentenceTransformer(
        modules=[transformer, Pooling(hidden_size, "mean"), Normalize()], device="cpu"
    )
