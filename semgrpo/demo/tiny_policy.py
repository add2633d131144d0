"""Give the demo's tiny policy the role of a *pretrained* base model.

A randomly initialised model with frozen embeddings cannot learn through LoRA alone (its logits are
projections on random vectors), while every real run starts from a pretrained LLM that has seen some
text of the new language. So the demo first trains the whole tiny model as a plain language model on
the training terms (each Chinese and Tibetan term alone, and each training pair as one line of parallel
text; never a dev pair, never the instruction format). It then knows the words but not the task: stage 1
(cold start) teaches the format, stage 2 (GRPO) the meaning.
"""
from __future__ import annotations

import math
import random
import time
from pathlib import Path


def pretrain_policy(policy_dir: str | Path, tokenizer, texts: list[str], *, seed: int, epochs: int = 20,
                    batch_size: int = 32, lr: float = 3e-3, pack_tokens: int | None = None,
                    cosine: bool = False, num_threads: int = 1, log_epochs: bool = False, log=print) -> float:
    """Full-parameter causal-LM training on `texts` (one sequence each, eos-terminated), saved in place.

    Seeded; with the default single thread the same inputs give byte-identical weights on any CPU.
    ``pack_tokens`` concatenates the sequences into one stream cut into blocks of that many tokens (plain LM
    pretraining on long passages, no padding); ``cosine`` decays the learning rate to 10% over the run
    instead of keeping it constant; ``log_epochs`` logs each epoch's mean loss and time.
    Returns the mean loss of the last epoch.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from semgrpo.data import collate_sft

    threads = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(str(policy_dir), dtype=torch.float32)
        model.train()
        seqs = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
        if pack_tokens:
            stream = [t for s in seqs for t in s]
            seqs = [stream[i:i + pack_tokens] for i in range(0, len(stream) - pack_tokens + 1, pack_tokens)]
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
        total = epochs * (len(seqs) // batch_size)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda i: 0.1 + 0.45 * (1 + math.cos(math.pi * min(i, total) / max(1, total))) if cosine else 1.0
        )
        rng = random.Random(seed)
        last = float("nan")
        for epoch in range(epochs):
            started = time.perf_counter()
            rng.shuffle(seqs)
            losses = []
            for start in range(0, len(seqs) - batch_size + 1, batch_size):
                batch = collate_sft([{"input_ids": s, "labels": s} for s in seqs[start:start + batch_size]],
                                    pad_token_id=tokenizer.pad_token_id)
                loss = model(**batch).loss
                loss.backward()
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss.item())
            last = sum(losses) / max(1, len(losses))
            if log_epochs:
                log(f"epoch {epoch + 1}/{epochs}: loss {last:.3f}, {time.perf_counter() - started:.0f} s")
        log(f"base policy pretrained on {len(seqs)} sequences, {epochs} epochs, loss {last:.3f}")
        model.save_pretrained(str(policy_dir))
        return last
    finally:
        torch.set_num_threads(threads)
