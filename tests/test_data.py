"""Tests for semgrpo.data and semgrpo.prompts: loading, validation, prompts, filtering, batching."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from semgrpo.data import (
    TASKS,
    DataError,
    Example,
    build_examples,
    collate_left_padded,
    collate_sft,
    load_records,
    render_prompt,
    sft_tensors,
)
from semgrpo.prompts import TaskSpec, get_task

WORDS = ["Translate", "from", "Tibetan", "to", "Chinese", "Write", "a", "title", "for", "this", "text", ":", "b", "c", "d", "e", "f", "g"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>"
    "{% if enable_thinking is defined and not enable_thinking %}<think></think>{% endif %}{% endif %}"
)


def make_tokenizer(*, chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """Whitespace/punctuation word-level tokenizer: one token per word or punctuation run."""
    vocab = {"[UNK]": 0, "[PAD]": 1, "[EOS]": 2}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")
    hf.chat_template = chat_template
    return hf


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def mt(i, bo="ཀ་ཁ།", zh="你好"):
    return json.dumps({"id": i, "bo": bo, "zh": zh}, ensure_ascii=False)


# ----------------------------------------------------------------------------- tasks and prompts


def test_task_specs():
    assert set(TASKS) == {"mt_bo_zh", "mt_zh_bo", "hg_bo"}
    assert all(isinstance(spec, TaskSpec) and spec.name == key for key, spec in TASKS.items())
    bo_zh, zh_bo, hg = TASKS["mt_bo_zh"], TASKS["mt_zh_bo"], TASKS["hg_bo"]
    assert (bo_zh.source_field, bo_zh.target_field, bo_zh.target_script) == ("bo", "zh", "han")
    assert (zh_bo.source_field, zh_bo.target_field, zh_bo.target_script) == ("zh", "bo", "tibetan")
    assert (hg.source_field, hg.target_field, hg.target_script) == ("text", "title", "tibetan")
    assert hg.required_fields == ("text", "title")
    with pytest.raises(dataclasses.FrozenInstanceError):
        bo_zh.name = "x"  # frozen
    assert get_task(hg) is hg
    with pytest.raises(ValueError, match=r"unknown task 'mt_en_xx' \(expected one of: mt_bo_zh, mt_zh_bo, hg_bo, or "
                                         r"mt_<source>_<target> with two CLDR language codes"):
        get_task("mt_en_xx")
    # mt_<source>_<target> for any two CLDR languages: fields named by the codes, R_lang in the target's script
    km, uz = get_task("mt_zh_km"), get_task("mt_en_uz_Arab")
    assert (km.source_field, km.target_field, km.target_script) == ("zh", "km", "Khmr")
    assert km.instruction == "Translate from Chinese to Khmer:"
    assert (uz.source_field, uz.target_field, uz.target_script) == ("en", "uz_Arab", "Arab")
    assert get_task("mt_en_bo").instruction == "Translate from English to Tibetan:"


def test_render_prompt_plain():
    tok = make_tokenizer()
    assert render_prompt("mt_zh_bo", "你好", tok) == "Translate from Chinese to Tibetan:\n你好\n"
    assert render_prompt("mt_bo_zh", "ཀ", None) == "Translate from Tibetan to Chinese:\nཀ\n"
    assert render_prompt(TASKS["hg_bo"], "ཀ", tok).startswith("Write a Tibetan title")


def test_render_prompt_chat_template():
    tok = make_tokenizer(chat_template=CHAT_TEMPLATE)
    got = render_prompt("mt_bo_zh", "ཀ་ཁ།", tok)
    assert got == "<|user|>Translate from Tibetan to Chinese:\nཀ་ཁ།\n<|assistant|><think></think>"
    # a template that ignores enable_thinking still renders
    tok.chat_template = "{% for m in messages %}[{{ m.content }}]{% endfor %}>"
    assert render_prompt("hg_bo", "ཀ", tok) == "[Write a Tibetan title for this Tibetan text:\nཀ]>"


@pytest.mark.parametrize("bad, expected", [("", "empty string"), (3, "int"), (None, "NoneType")])
def test_render_prompt_bad_source(bad, expected):
    with pytest.raises(ValueError, match=f"source_text must be a non-empty string, got {expected}"):
        render_prompt("mt_bo_zh", bad, None)


# ----------------------------------------------------------------------------- loading


def test_load_jsonl_blank_lines_and_ids(tmp_path):
    path = write_lines(
        tmp_path / "train.jsonl",
        [mt("a"), "", "   ", mt(7, bo="ག", zh="三"), json.dumps({"bo": "ང", "zh": "四", "extra": 1}, ensure_ascii=False)],
    )
    recs = load_records(path, task="mt_bo_zh")
    assert recs == [
        {"id": "a", "bo": "ཀ་ཁ།", "zh": "你好"},
        {"id": "7", "bo": "ག", "zh": "三"},
        {"id": f"{path}:5", "bo": "ང", "zh": "四"},
    ]


def test_load_directory_and_split(tmp_path):
    write_lines(tmp_path / "train.jsonl", [mt(1)])
    write_lines(tmp_path / "dev.jsonl", [mt(2), mt(3)])
    assert [r["id"] for r in load_records(tmp_path, task="mt_zh_bo")] == ["1"]
    assert [r["id"] for r in load_records(str(tmp_path), task="mt_zh_bo", split="dev")] == ["2", "3"]
    with pytest.raises(DataError, match=re.escape(f"{tmp_path}: directory holds none of test.jsonl, test.json, test.parquet")):
        load_records(tmp_path, task="mt_zh_bo", split="test")


def test_load_json_array(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps([{"id": 1, "text": "ཀ", "title": "ཁ"}, {"text": "ག", "title": "ང"}]), encoding="utf-8")
    recs = load_records(path, task="hg_bo")
    assert recs == [{"id": "1", "text": "ཀ", "title": "ཁ"}, {"id": f"{path}:2", "text": "ག", "title": "ང"}]


def test_parquet_round_trip(tmp_path):
    import datasets

    rows = [{"id": 5, "bo": "ཀ", "zh": "一"}, {"id": 6, "bo": "ཁ", "zh": "二"}]
    path = tmp_path / "train.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    assert load_records(path, task="mt_bo_zh") == [{"id": "5", "bo": "ཀ", "zh": "一"}, {"id": "6", "bo": "ཁ", "zh": "二"}]
    assert load_records(tmp_path, task="mt_bo_zh") == load_records(path, task="mt_bo_zh")  # dir lookup
    bad = tmp_path / "bad.parquet"
    datasets.Dataset.from_list([{"id": 1, "bo": "ཀ"}]).to_parquet(str(bad))
    with pytest.raises(DataError, match=re.escape(f'{bad}: row 1: field "zh" missing (expected keys: id, bo, zh)')):
        load_records(bad, task="mt_bo_zh")


def test_hub_id(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, *, split):
        calls.append((name, split))
        if name == "owner/missing":
            raise FileNotFoundError("Couldn't find dataset owner/missing\nmore detail")
        return [{"id": "x", "text": "ཀ", "title": "ཁ"}, {"text": "ག", "title": "ང"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    recs = load_records("owner/name", task="hg_bo", split="validation")
    assert calls == [("owner/name", "validation")]
    assert recs == [{"id": "x", "text": "ཀ", "title": "ཁ"}, {"id": "owner/name[validation]:2", "text": "ག", "title": "ང"}]
    with pytest.raises(DataError, match=r"^owner/missing: not a local path, .*hub dataset \(split 'train'\) failed: Couldn't find dataset owner/missing$"):
        load_records("owner/missing", task="hg_bo")
    # a missing local file that looks like owner/name but has a data suffix is not sent to the hub
    with pytest.raises(DataError, match=r"^data/train\.jsonl: file not found$"):
        load_records("data/train.jsonl", task="hg_bo")
    assert len(calls) == 2


def test_file_not_found_and_unsupported(tmp_path):
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'nope.jsonl'}: file not found")):
        load_records(tmp_path / "nope.jsonl", task="mt_bo_zh")
    csv = tmp_path / "a.csv"
    csv.write_text("id,bo,zh\n")
    with pytest.raises(DataError, match=r"unsupported file type '\.csv' \(expected \.jsonl, \.json, \.parquet or a directory\)"):
        load_records(csv, task="mt_bo_zh")
    with pytest.raises(DataError, match="unknown task 'mt'"):
        load_records(csv, task="mt")


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"id": 1 "bo": "x"}', "not valid JSON (Expecting ',' delimiter at column 10)"),
        ('{"id": 1, "bo": "ཀ"}', 'field "zh" missing (expected keys: id, bo, zh)'),
        ('{"id": 1, "bo": 5, "zh": "一"}', 'field "bo" must be a non-empty string, got int'),
        ('{"id": 1, "bo": "ཀ", "zh": null}', 'field "zh" must be a non-empty string, got NoneType'),
        ('{"id": 1, "bo": " ", "zh": "一"}', "field \"bo\" must be a non-empty string, got ' '"),
        ('{"id": 1.5, "bo": "ཀ", "zh": "一"}', 'field "id" must be a string or an integer, got float'),
        ('{"id": true, "bo": "ཀ", "zh": "一"}', 'field "id" must be a string or an integer, got bool'),
        ('["ཀ", "一"]', "expected a JSON object with keys id, bo, zh, got list"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path, line, message):
    path = write_lines(tmp_path / "train.jsonl", [mt(1), "", line, mt(4)])
    with pytest.raises(DataError) as info:
        load_records(path, task="mt_bo_zh")
    assert str(info.value) == f"{path}:3: {message}"
    assert "\n" not in str(info.value)


def test_bad_utf8_and_empty_file(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(mt(1).encode() + b"\n" + b'{"id": "\xff"}\n')
    with pytest.raises(DataError, match=re.escape(f"{path}:2: not valid UTF-8 (byte 9)")):
        load_records(path, task="mt_bo_zh")
    path.write_text("\n\n")
    with pytest.raises(DataError, match=re.escape(f"{path}: no records found")):
        load_records(path, task="mt_bo_zh")


def test_utf8_bom_first_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + mt(1).encode() + b"\n")
    assert load_records(path, task="mt_bo_zh")[0]["id"] == "1"


# ----------------------------------------------------------------------------- examples


def test_build_examples_tokens_and_filtering(tmp_path):
    tok = make_tokenizer()
    # plain prompt "Translate from Chinese to Tibetan:\n<src>\n" = 6 tokens + one per source word
    records = [
        {"id": "short", "zh": "b", "bo": "c d"},  # prompt 7, sample 9
        {"id": "longprompt", "zh": "b c d e", "bo": "c"},  # prompt 10 > 8
        {"id": "longsample", "zh": "b c", "bo": "c d e f g"},  # prompt 8, sample 13 > 12
        {"id": "edge", "zh": "b c", "bo": "d e f g"},  # prompt 8, sample 12: kept (limits inclusive)
    ]
    messages = []
    got = build_examples(records, task="mt_zh_bo", tokenizer=tok, max_prompt_length=8, max_sample_tokens=12,
                         source="toy", log=messages.append)
    assert [e.id for e in got] == ["short", "edge"]
    v = tok.get_vocab()
    head = [v[w] for w in ["Translate", "from", "Chinese", "to", "Tibetan", ":"]]
    assert got[0] == Example(id="short", prompt="Translate from Chinese to Tibetan:\nb\n",
                             prompt_ids=head + [v["b"]], reference="c d", reference_ids=[v["c"], v["d"]])
    assert got[1].prompt_ids == head + [v["b"], v["c"]]
    assert got[1].reference_ids == [v[w] for w in ["d", "e", "f", "g"]]  # no eos appended
    assert messages == [
        "toy: kept 2 of 4 (2 over max_prompt_length / max_sample_tokens: 1 with prompt > 8 tokens, "
        "1 with prompt + reference > 12 tokens)"
    ]
    quiet = []
    build_examples(records[:1], task="mt_zh_bo", tokenizer=tok, max_prompt_length=8, log=quiet.append)
    assert quiet == []


def test_build_examples_nothing_left():
    tok = make_tokenizer()
    records = [{"id": i, "bo": "b c", "zh": "d"} for i in range(3)]
    with pytest.raises(DataError) as info:
        build_examples(records, task="mt_bo_zh", tokenizer=tok, max_prompt_length=256, max_sample_tokens=5, source="d.jsonl")
    assert str(info.value) == (
        "d.jsonl: no examples left after filtering: 3 records, 0 with prompt longer than 256 tokens, "
        "3 with prompt + reference longer than 5 tokens"
    )
    with pytest.raises(DataError, match="no examples left after filtering: 0 records"):
        build_examples([], task="mt_bo_zh", tokenizer=tok, max_prompt_length=8)


def test_build_examples_chat_template_no_double_specials():
    tok = make_tokenizer(chat_template=CHAT_TEMPLATE)
    tok.add_special_tokens({"bos_token": "[BOS]"})
    bos = tok.bos_token_id
    tok._tokenizer.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", bos)])
    assert tok("c")["input_ids"][0] == bos  # the tokenizer would add BOS by default
    (ex,) = build_examples([{"id": 1, "bo": "b", "zh": "c"}], task="mt_bo_zh", tokenizer=tok, max_prompt_length=64)
    assert ex.prompt.startswith("<|user|>") and ex.prompt.endswith("<|assistant|><think></think>")
    assert bos not in ex.prompt_ids and bos not in ex.reference_ids
    assert ex.reference_ids == [tok.get_vocab()["c"]]


@pytest.mark.parametrize("kwargs, message", [
    ({"max_prompt_length": 0}, "max_prompt_length must be a positive int, got 0"),
    ({"max_prompt_length": 8, "max_sample_tokens": 2.5}, "max_sample_tokens must be a positive int, got 2.5"),
    ({"max_prompt_length": 8, "log": "stdout"}, "log must be a callable taking a str or None, got str"),
])
def test_build_examples_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build_examples([{"bo": "b", "zh": "c"}], task="mt_bo_zh", tokenizer=make_tokenizer(), **kwargs)


def test_build_examples_bad_record():
    with pytest.raises(DataError, match=r'^x: record 2: field "title" must be a non-empty string, got NoneType$'):
        build_examples([{"text": "b", "title": "c"}, {"text": "b"}], task="hg_bo", tokenizer=make_tokenizer(),
                       max_prompt_length=8, source="x")


# ----------------------------------------------------------------------------- tensors


def test_sft_tensors_masking_and_truncation():
    ex = Example(id="1", prompt="p", prompt_ids=[10, 11, 12], reference="r", reference_ids=[20, 21])
    full = sft_tensors(ex, eos_token_id=2, max_length=100)
    assert full == {"input_ids": [10, 11, 12, 20, 21, 2], "labels": [-100, -100, -100, 20, 21, 2]}
    cut = sft_tensors(ex, eos_token_id=2, max_length=4)
    assert cut == {"input_ids": [10, 11, 12, 20], "labels": [-100, -100, -100, 20]}
    assert sft_tensors(ex, eos_token_id=0, max_length=2)["labels"] == [-100, -100]
    with pytest.raises(ValueError, match="eos_token_id must be a non-negative int, got None"):
        sft_tensors(ex, eos_token_id=None, max_length=4)
    with pytest.raises(ValueError, match="max_length must be a positive int, got -1"):
        sft_tensors(ex, eos_token_id=2, max_length=-1)


def test_collate_left_padded():
    ids, mask = collate_left_padded([[5, 6, 7], [8], [9, 10]], pad_token_id=0)
    assert ids.dtype == torch.long and mask.dtype == torch.long
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 9, 10]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]
    ids, mask = collate_left_padded([torch.tensor([3, 4])], pad_token_id=1)
    assert ids.tolist() == [[3, 4]] and mask.tolist() == [[1, 1]]
    ids, _ = collate_left_padded([[np.int64(3)], [4, 5]], pad_token_id=np.int64(9))  # numpy ints are ints
    assert ids.tolist() == [[9, 3], [4, 5]]
    with pytest.raises(ValueError, match=r"pad_token_id must be a non-negative int, got None \(set tokenizer.pad_token\)"):
        collate_left_padded([[1]], pad_token_id=None)
    with pytest.raises(ValueError, match=r"sequences\[1\] must be a non-empty list of ints, got \[\]"):
        collate_left_padded([[1], []], pad_token_id=0)
    with pytest.raises(ValueError, match=r"sequences\[0\] must be a non-empty list of ints, got \[1.5\]"):
        collate_left_padded([[1.5]], pad_token_id=0)
    with pytest.raises(ValueError, match="sequences must be a non-empty list"):
        collate_left_padded([], pad_token_id=0)


def test_collate_sft():
    ex = Example(id="1", prompt="p", prompt_ids=[10, 11], reference="r", reference_ids=[20])
    a = sft_tensors(ex, eos_token_id=2, max_length=16)
    b = {"input_ids": [7], "labels": [7]}
    out = collate_sft([a, b], pad_token_id=0)
    assert set(out) == {"input_ids", "attention_mask", "labels"}
    assert out["input_ids"].tolist() == [[10, 11, 20, 2], [7, 0, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 0, 0, 0]]
    assert out["labels"].tolist() == [[-100, -100, 20, 2], [7, -100, -100, -100]]
    assert all(t.dtype == torch.long for t in out.values())
    with pytest.raises(ValueError, match=r"batch\[0\]: input_ids has 2 tokens but labels has 1"):
        collate_sft([{"input_ids": [1, 2], "labels": [1]}], pad_token_id=0)
    with pytest.raises(ValueError, match=r"batch\[0\] must be a dict with keys input_ids and labels"):
        collate_sft([{"input_ids": [1]}], pad_token_id=0)


# ----------------------------------------------------------------------------- real data


REAL_FILES = [
    ("bo_zh_openpecha", "mt_bo_zh"),
    ("bo_title_openpecha", "hg_bo"),
]


@pytest.mark.parametrize("folder, task", REAL_FILES)
@pytest.mark.parametrize("split", ["train", "dev"])
def test_real_data_loads(folder, task, split, real_data_root):
    path = real_data_root / folder / f"{split}.jsonl"
    spec = TASKS[task]
    expected = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            raw = json.loads(line)
            expected.append({"id": str(raw["id"]), **{f: raw[f] for f in spec.required_fields}})
    assert load_records(real_data_root / folder, task=task, split=split) == expected
    # the reverse MT direction reads the same files
    if task == "mt_bo_zh":
        assert len(load_records(path, task="mt_zh_bo")) == len(expected)


def test_real_data_length_filter(real_data_root):
    tok = make_tokenizer()
    records = load_records(real_data_root / "bo_title_openpecha", task="hg_bo", split="dev")
    limit = 300
    n_prompt = [len(tok(render_prompt("hg_bo", r["text"], tok), add_special_tokens=False)["input_ids"]) for r in records]
    n_ref = [len(tok(r["title"], add_special_tokens=False)["input_ids"]) for r in records]
    want = [r["id"] for r, p, t in zip(records, n_prompt, n_ref) if p <= 10_000 and p + t <= limit]
    assert 0 < len(want) < len(records)  # the limit really cuts
    got = build_examples(records, task="hg_bo", tokenizer=tok, max_prompt_length=10_000, max_sample_tokens=limit)
    assert [e.id for e in got] == want
