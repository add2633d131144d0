"""Give the demo's tiny policy the role of a *pretrained* base model.

A randomly initialised model with frozen embeddings cannot learn through LoRA alone (its logits are
projections on random vectors), while every real run starts from a pretrained LLM that has seen some
text of the new language. So the demo first trains the whole tiny model as a plain language model on
the training terms (each Chinese and Tibetan term alone, and each training pair as one line of parallel
text; never a dev pair, never the instruction format). It then knows the words but not the task: stage 1
(cold start) teaches the format, stage 2 (GRPO) the meaning.
"""
from __future__ import annotations

import random
from pathlib import Path


def pretrain_policy(policy_dir: str | Path, tokenizer, texts: list[str], *, seed: int, epochs: int = 20,
                    batch_size: int = 32, lr: float = 3e-3, log=print) -> float:
    """Full-parameter causal-LM training on `texts` (one sequence each, eos-terminated), saved in place.

    Single-threaded and seeded, so the same inputs give byte-identical weights on any CPU.
    Returns the mean loss of the last epoch.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from semgrpo.data import collate_sft

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(str(policy_dir), dtype=torch.float32)
        model.train()
        seqs = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
        rng = random.Random(seed)
        last = float("nan")
        for _ in range(epochs):
            rng.shuffle(seqs)
            losses = []
            for start in range(0, len(seqs) - batch_size + 1, batch_size):
                batch = collate_sft([{"input_ids": s, "labels": s} for s in seqs[start:start + batch_size]],
                                    pad_token_id=tokenizer.pad_token_id)
                loss = model(**batch).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss.item())
            last = sum(losses) / max(1, len(losses))
        log(f"demo: base policy pretrained on {len(texts)} lines, {epochs} epochs, loss {last:.3f}")
        model.save_pretrained(str(policy_dir))
        return last
    finally:
        torch.set_num_threads(threads)
