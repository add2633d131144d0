"""Export a finished run as one Hugging Face folder (`bin/export.py`): a full model that
`AutoModelForCausalLM.from_pretrained` and vLLM load as they are, or (`--adapter-only`) one PEFT adapter
over the original base.

    source.py   RUN_DIR -> checkpoint, the config it was trained with, base, tokenizer, adapters, dtype
    lora.py     LoRA runs: the init_from chain + the run's adapter merged, or folded into one adapter
    zero.py     full-parameter runs: DeepSpeed's consolidation of the ZeRO shards, unpickled weights-only
    output.py   OUT_DIR checks, the staging folder and its atomic rename, the files written
    cli.py      the command line

Everything is computed in fp32 and cast to the run's dtype (or --dtype) only when written.
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from semgrpo.checkpoint import CHECKPOINTS_DIR
from semgrpo.config import ConfigError
from semgrpo.export.source import ExportSource, resolve_source
from semgrpo.modeling import _Loading


def _say(message: str) -> None:
    print(f"export: {message}", flush=True)


def export_run(run_dir: str | Path, out_dir: str | Path, *, checkpoint: str | Path | None = None,
               dtype: str | None = None, adapter_only: bool = False, overwrite: bool = False,
               say: Callable[[str], None] = _say) -> Path:
    """Write the policy of `run_dir`'s checkpoint (default: its newest intact one) into `out_dir`.

    Raises:
        UserError (ConfigError, CheckpointError): one line naming what is wrong; nothing written to `out_dir`.
    """
    from semgrpo.export.lora import fold_chain, merge_chain
    from semgrpo.export.output import check_out_dir, save_adapter, save_model, save_tokenizer, staged_dir
    from semgrpo.export.zero import consolidated_state_dict, load_into

    source = resolve_source(run_dir, checkpoint=checkpoint, dtype=dtype)
    if adapter_only and source.full_parameter:
        raise ConfigError(f"--adapter-only needs a LoRA run, but RUN_DIR {str(run_dir)!r} is a full-parameter run "
                          f"(model.lora.enabled: false in {source.config_file}); drop --adapter-only to export "
                          "the full model")
    out = Path(out_dir)
    check_out_dir(out, overwrite=overwrite, reads=_reads(source))
    say(f"{source.checkpoint} ({_describe(source)}), writing {source.dtype}")
    # Every check passed. transformers and PEFT import DeepSpeed, whose logger keeps the stdout it first
    # sees: give it stderr, so that stdout carries the progress lines only.
    with contextlib.redirect_stdout(sys.stderr):
        import deepspeed  # noqa: F401

    model = _load_base(source.base, say)
    if source.full_parameter:
        say(f"consolidating the ZeRO shards under {source.engine_state}")
        state_dict = consolidated_state_dict(source.engine_state)
        load_into(model, state_dict, base=source.base)
        del state_dict
    elif adapter_only:
        model = fold_chain(model, source.adapters, say)
    else:
        model = merge_chain(model, source.adapters, say)

    with staged_dir(out) as staging:
        say(f"writing {'the adapter' if adapter_only else 'the model'} and the tokenizer into {staging}")
        if adapter_only:
            save_adapter(model, staging, dtype=source.dtype)
        else:
            save_model(model, staging, dtype=source.dtype)
        save_tokenizer(source.tokenizer, staging)
    say(f"wrote {out}")
    return out


def _load_base(base: str, say: Callable[[str], None]):
    from transformers import AutoModelForCausalLM

    from semgrpo.partitioned import check_whole_checkpoint_fits

    say(f"loading the base {base} (fp32)")
    with _Loading("model.path", base):
        check_whole_checkpoint_fits(base)  # a weight transformers would drop or invent is an error
        return AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)


def _describe(source: ExportSource) -> str:
    if source.full_parameter:
        return "full-parameter run"
    inherited = len(source.adapters) - 1
    return f"LoRA run: its adapter after {inherited} of its init_from chain" if inherited else "LoRA run"


def _reads(source: ExportSource) -> list[tuple[str, Path, bool]]:
    """Everything the export reads, as (what, path, may hold OUT_DIR): OUT_DIR may be none of them, hold none
    of them, and lie inside none of them but the run folder (runs/x/export is the usual place)."""
    reads = [("the run", source.run_dir, True), ("the run's checkpoints", source.run_dir / CHECKPOINTS_DIR, False),
             ("the checkpoint", source.checkpoint, False), ("the run's config", source.config_file, False)]
    for what, path in (("the base model", source.base), ("the tokenizer", source.tokenizer)):
        if Path(path).exists():  # not a hub id
            reads.append((what, Path(path), False))
    for adapter in source.adapters:  # the init_from chain: adapters in other runs' checkpoints
        reads.append(("an adapter of the run", adapter, False))
        held_in = next((p for p in adapter.parents if p.name == CHECKPOINTS_DIR), None)
        if held_in is not None:
            reads.append(("the checkpoints of an init_from run", held_in, False))
    return reads
