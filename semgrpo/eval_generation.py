"""Greedy batched generation for evaluation, and the fixed CMRC 2018 question-answering prompt."""
from __future__ import annotations

from typing import Any

import torch

from semgrpo.data import collate_left_padded
from semgrpo.rollout import cut_after_eos

# Fixed for every model so CMRC scores compare: answer with a span of the passage, nothing else.
CMRC_INSTRUCTION = "阅读下面的文章并回答问题。答案请直接摘录文章中的原文片段，不要解释。"


@torch.no_grad()
def generate_texts(model, tokenizer, prompts: list[list[int]], *, eos_ids: list[int], max_new_tokens: int,
                   batch_size: int, device: torch.device, progress=None) -> list[str]:
    """Greedy completions of token-id prompts, decoded without special tokens, in input order.

    Prompts are batched by length (less padding), left padded as in training.
    """
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    starts = range(0, len(order), batch_size)
    for s in progress(starts) if progress else starts:
        rows = order[s:s + batch_size]
        ids, mask = collate_left_padded([prompts[i] for i in rows], pad_token_id=tokenizer.pad_token_id)
        ids, mask = ids.to(device), mask.to(device)
        generated = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                   do_sample=False, eos_token_id=eos_ids, pad_token_id=tokenizer.pad_token_id)
        completion, _ = cut_after_eos(generated[:, ids.shape[1]:], eos_ids, tokenizer.pad_token_id)
        for i, text in zip(rows, tokenizer.batch_decode(completion, skip_special_tokens=True)):
            out[i] = text
    return out


def cmrc_questions(dataset: dict[str, Any], *, limit: int = 0) -> list[dict[str, str]]:
    """``[{"id", "context", "question"}]`` in file order (the first `limit`, 0 = all)."""
    items = [{"id": str(qa["id"]).strip(), "context": para["context"], "question": qa["question"]}
             for article in dataset["data"] for para in article["paragraphs"] for qa in para["qas"]]
    return items[:limit] if limit > 0 else items


def cmrc_prompt_ids(item: dict[str, str], tokenizer, *, max_prompt_tokens: int) -> list[int]:
    """Token ids of the QA prompt; the passage is cut (from its end) so the prompt fits `max_prompt_tokens`."""
    def render(context: str) -> list[int]:
        content = f"{CMRC_INSTRUCTION}\n\n文章：{context}\n\n问题：{item['question']}"
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                 add_generation_prompt=True, enable_thinking=False)
        else:
            text = content + "\n答案："
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    ids = render(item["context"])
    if len(ids) <= max_prompt_tokens:
        return ids
    context_ids = tokenizer(item["context"], add_special_tokens=False)["input_ids"]
    keep = max(0, len(context_ids) - (len(ids) - max_prompt_tokens) - 8)  # 8: re-tokenization slack
    return render(tokenizer.decode(context_ids[:keep]))[-max_prompt_tokens:]


def first_answer_line(text: str) -> str:
    """The prediction scored by CMRC: the first non-empty line, without an "答案：" echo."""
    for line in text.splitlines():
        line = line.strip()
        if line:
            return line.removeprefix("答案：").removeprefix("答案:").strip()
    return ""
