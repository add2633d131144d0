"""Data: records -> validated dicts -> tokenized examples -> padded batches.

    records.py   read a source (JSONL, JSON, Parquet, a folder, data:<path>, a hub id), check every record
    examples.py  render, tokenize and length-filter records into Examples; an Example's SFT sequence
    batches.py   left-padded prompt batches for generation, right-padded SFT batches
"""

from semgrpo.data.batches import IGNORE_INDEX, collate_left_padded, collate_sft
from semgrpo.data.examples import Example, build_examples, sft_tensors
from semgrpo.data.records import DataError, iter_json_lines, load_records
from semgrpo.prompts import TASKS, TaskSpec, render_prompt

__all__ = [
    "DataError", "TASKS", "TaskSpec", "render_prompt", "load_records", "iter_json_lines", "Example", "build_examples",
    "sft_tensors", "collate_left_padded", "collate_sft", "IGNORE_INDEX",
]
