"""Greedy batched generation for evaluation, and the fixed CMRC 2018 question-answering prompt."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from semgrpo.data import DataError, collate_left_padded
from semgrpo.data_root import resolve_data_path
from semgrpo.prompts import render_chat
from semgrpo.rollout import cut_after_eos

# Fixed for every model so CMRC scores compare: answer with a span of the passage, nothing else.
CMRC_INSTRUCTION = "阅读下面的文章并回答问题。答案请直接摘录文章中的原文片段，不要解释。"


@torch.no_grad()
def generate_texts(model, tokenizer, prompts: list[list[int]], *, eos_ids: list[int], max_new_tokens: int,
                   batch_size: int, device: torch.device, progress=None, with_lengths: bool = False):
    """Greedy completions of token-id prompts, decoded without special tokens, in input order.

    Prompts are batched by length (less padding), left padded as in training. With `with_lengths`, returns
    ``(texts, lengths, capped)``: each completion's token count (its end-of-sequence token included) and
    whether it ran into `max_new_tokens` without ending.
    """
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    lengths, capped = [0] * len(prompts), [False] * len(prompts)
    starts = range(0, len(order), batch_size)
    for s in progress(starts) if progress else starts:
        rows = order[s:s + batch_size]
        ids, mask = collate_left_padded([prompts[i] for i in rows], pad_token_id=tokenizer.pad_token_id)
        ids, mask = ids.to(device), mask.to(device)
        generated = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                   do_sample=False, eos_token_id=eos_ids, pad_token_id=tokenizer.pad_token_id)
        completion, completion_mask = cut_after_eos(generated[:, ids.shape[1]:], eos_ids, tokenizer.pad_token_id)
        ended = torch.isin(completion, torch.as_tensor(eos_ids, device=completion.device)).any(1)
        for k, (i, text) in enumerate(zip(rows, tokenizer.batch_decode(completion, skip_special_tokens=True))):
            out[i] = text
            lengths[i] = int(completion_mask[k].sum())
            capped[i] = bool(lengths[i] >= max_new_tokens and not ended[k])
    return (out, lengths, capped) if with_lengths else out


def cmrc_questions(dataset: dict[str, Any], *, limit: int = 0) -> list[dict[str, str]]:
    """``[{"id", "context", "question"}]`` in file order (the first `limit`, 0 = all)."""
    items = [{"id": str(qa["id"]).strip(), "context": para["context"], "question": qa["question"]}
             for article in dataset["data"] for para in article["paragraphs"] for qa in para["qas"]]
    return items[:limit] if limit > 0 else items


def load_cmrc(path: str | Path) -> dict[str, Any]:
    """A CMRC 2018 (SQuAD-style) JSON file (a path, or `data:<path>` in the data root), checked to have the
    structure that scoring reads.

    Raises:
        DataError: the file is unreadable, not JSON, or not ``{"data": [{"paragraphs": [{"context",
            "qas": [{"id", "question", "answers": [{"text"}]}]}]}]}``; the message names the file and
            the first offending place.
        DataRootError: a `data:` path that the data root does not hold.
    """
    path = resolve_data_path(path)
    try:
        dataset = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"CMRC file {str(path)!r} could not be read as JSON: {exc}") from None

    def need(ok: bool, where: str, what: str) -> None:
        if not ok:
            raise DataError(f"CMRC file {str(path)!r}: {where} must be {what} (SQuAD-style CMRC 2018 "
                            "expected: {\"data\": [{\"paragraphs\": [{\"context\", \"qas\": [...]}]}]})")

    need(isinstance(dataset, dict) and isinstance(dataset.get("data"), list), "the top level",
         'an object with a "data" list')
    for a, article in enumerate(dataset["data"]):
        need(isinstance(article, dict) and isinstance(article.get("paragraphs"), list), f"data[{a}]",
             'an object with a "paragraphs" list')
        for p, para in enumerate(article["paragraphs"]):
            where = f"data[{a}].paragraphs[{p}]"
            need(isinstance(para, dict) and isinstance(para.get("context"), str)
                 and isinstance(para.get("qas"), list), where, 'an object with a "context" string and a "qas" list')
            for q, qa in enumerate(para["qas"]):
                at = f"{where}.qas[{q}]"
                need(isinstance(qa, dict) and isinstance(qa.get("id"), (str, int)) and str(qa["id"]).strip()
                     and isinstance(qa.get("question"), str), at, 'an object with an "id" and a "question" string')
                answers = qa.get("answers")
                need(isinstance(answers, list) and all(isinstance(x, dict) and isinstance(x.get("text"), str)
                                                       for x in answers), f"{at}.answers",
                     'a list of {"text": ...} objects')
    if not any(para["qas"] for article in dataset["data"] for para in article["paragraphs"]):
        raise DataError(f"CMRC file {str(path)!r} holds no questions")
    return dataset


def cmrc_prompt_ids(item: dict[str, str], tokenizer, *, max_prompt_tokens: int) -> list[int]:
    """Token ids of the QA prompt; the passage is cut (from its end) so the prompt fits `max_prompt_tokens`."""
    def render(context: str) -> list[int]:
        content = f"{CMRC_INSTRUCTION}\n\n文章：{context}\n\n问题：{item['question']}"
        text = render_chat(tokenizer, content)
        text = content + "\n答案：" if text is None else text
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
