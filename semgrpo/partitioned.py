"""Build the policy already partitioned under ZeRO-3: each rank holds about 1/world of the weights from the
first byte, instead of loading the whole model and handing it to DeepSpeed to cut up.

The model is created by transformers inside `deepspeed.zero.Init` (an `HfDeepSpeedConfig` alive while it is
built), then the checkpoint is copied in with transformers' own ZeRO-3 loader (each module gathered with
`GatheredParameters(modifier_rank=0)`, rank 0's values scattered). One difference from `from_pretrained`:
that reads the whole checkpoint into rank 0's memory first (a full copy of the model on one rank); here
rank 0 reads one decoder layer's tensors at a time, so no rank ever holds the whole model. Adapters of a
`model.init_from` chain are merged the same way, one layer at a time.

Before any weight is read, `check_checkpoint_fits` compares the checkpoint's tensor names and shapes (the
safetensors headers, which every rank reads alike) with the model its config.json builds: a tensor the model
has no place for, a weight the checkpoint lacks or one of another shape is one ConfigError, raised on every
rank at once (transformers' loader would drop the extra tensors silently). The whole-weight path runs the same
check on a model built on the meta device (`modeling.load_policy`).
"""
from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from types import SimpleNamespace

import torch

from semgrpo import dist
from semgrpo.config import ConfigError


def is_partitioned(ds_config: dict | None, world_size: int | None = None) -> bool:
    """ZeRO-3 with more than one rank (this run's, or `world_size` when planning one that is not running).
    ZeRO-2 and single-process runs load whole weights, as before."""
    if not ds_config:
        return False
    stage = ds_config.get("zero_optimization", {}).get("stage", 0)
    return stage == 3 and (dist.world_size() if world_size is None else world_size) > 1


@contextlib.contextmanager
def zero3_loading(ds_config: dict):
    """`from_pretrained` / `from_config` inside this block create partitioned parameters.

    transformers finds the DeepSpeed config through a weak reference to a live `HfDeepSpeedConfig`; the
    object lives only for the block, so nothing later (generation, resizing) takes the ZeRO-3 branches of
    transformers by surprise.
    """
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    live = HfDeepSpeedConfig(ds_config)
    try:
        yield live
    finally:
        unset_hf_deepspeed_config()
        del live


_LAYER = re.compile(r"^(.*?\blayers\.\d+)\.")


def load_pretrained_partitioned(path: str, *, dtype: torch.dtype, ds_config: dict):
    """`AutoModelForCausalLM.from_pretrained(path)` with every parameter partitioned from the start.

    Collective: every rank calls it. Only rank 0 reads weights, one layer's tensors at a time (the other
    ranks receive their slices from the gathers). Raises ValueError naming any model weight the checkpoint
    did not provide.
    """
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.integrations.deepspeed import _load_state_dict_into_zero3_model

    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    files = _weight_files(Path(path))
    # from_config initialises the weights randomly before they are overwritten; fork the RNG so loading
    # leaves the seed's stream (the fresh LoRA's init, sampling) as the whole-weight path leaves it.
    with zero3_loading(ds_config), torch.random.fork_rng(devices=devices):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=dtype)
        check_checkpoint_fits(model, files, path)  # every rank, before the first collective gather
        # Renamings/fusions (e.g. MoE experts) are applied per chunk; a layer's keys stay in one chunk.
        load_config = _LoadConfig(get_model_conversion_mapping(model))
        unloaded = set(model.state_dict())
        for group in _key_groups(files):
            chunk = {}
            for file, keys in group.items():
                with safe_open(str(file), framework="pt") as f:  # closed per group: its pages leave RSS
                    for key in keys:
                        chunk[key] = (f.get_tensor(key) if dist.rank() == 0 else
                                      torch.empty(f.get_slice(key).get_shape(), device="meta"))
            errors, missing = _load_state_dict_into_zero3_model(model, chunk, load_config)
            if errors:
                raise ValueError("; ".join(str(e) for e in errors)[:500])
            unloaded &= set(missing)
            del chunk
        model.tie_weights()
    loaded_ids = {id(p) for n, p in model.named_parameters(remove_duplicate=False) if n not in unloaded}
    params = dict(model.named_parameters(remove_duplicate=False))
    absent = sorted(n for n in unloaded if n in params and id(params[n]) not in loaded_ids)  # tied = loaded
    if absent:
        raise ValueError(f"the checkpoint has no weights for {', '.join(absent[:5])}"
                         + (f" and {len(absent) - 5} more" if len(absent) > 5 else ""))
    return model


def check_checkpoint_fits(model, files: dict[str, Path], path: str) -> None:
    """Raise a ConfigError unless the tensors of `files` ({name: safetensors file}) fill `model` exactly.

    Names are matched as transformers' loader matches them (its renamings, the base-model prefix added or
    dropped, the keys a model declares it may ignore); a weight tied to a loaded one (tied embeddings) may be
    absent. Shapes are compared where no conversion (e.g. an MoE fusion) reshapes the tensor. Reads headers only.
    """
    from safetensors import safe_open
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    params = dict(model.named_parameters(remove_duplicate=False))
    expected = {name: tuple(getattr(params.get(name), "ds_shape", tensor.shape))
                for name, tensor in model.state_dict().items()}  # a partitioned parameter's own shape is empty
    mapping = get_model_conversion_mapping(model)
    renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
    converters = [m for m in mapping if isinstance(m, WeightConverter)]
    present = dict.fromkeys(expected, True)  # what rename_source_key looks names up in
    unexpected, reshaped, loaded = set(), [], set()
    for file in sorted(set(files.values())):
        with safe_open(str(file), framework="pt") as f:
            for key in (k for k, v in files.items() if v == file):
                name, converted = rename_source_key(key, renamings, converters,
                                                    base_model_prefix=model.base_model_prefix, meta_state_dict=present)
                if name not in expected:
                    unexpected.add(key)
                    continue
                loaded.add(name)
                shape = tuple(f.get_slice(key).get_shape())
                if converted is None and shape != expected[name]:
                    reshaped.append(f"{key} {list(shape)} vs {list(expected[name])}")
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    missing = {name for name in expected.keys() - loaded
               if not (tied.get(name) in loaded or any(t in loaded and s == name for t, s in tied.items()))}
    info = SimpleNamespace(missing_keys=missing, unexpected_keys=unexpected)
    if hasattr(model, "_adjust_missing_and_unexpected_keys"):  # the names the model says a checkpoint may lack/add
        model._adjust_missing_and_unexpected_keys(info)
    problems = [f"{label}: {len(keys)} ({_first(keys)})" for label, keys in (
        ("tensors the model has no place for", sorted(info.unexpected_keys)),
        ("weights the checkpoint lacks", sorted(info.missing_keys)),
        ("tensors of another shape, checkpoint vs model", sorted(reshaped))) if keys]
    if problems:
        raise ConfigError(f"model.path {path!r} does not fit the {type(model).__name__} its config.json builds: "
                          f"{'; '.join(problems)}. Is config.json the checkpoint's own?")


def _first(keys: list[str], shown: int = 4) -> str:
    return ", ".join(keys[:shown]) + (f" and {len(keys) - shown} more" if len(keys) > shown else "")


def check_whole_checkpoint_fits(path: str) -> None:
    """`check_checkpoint_fits` for a whole-weight load of `path`, on a model built on the meta device (nothing
    allocated); a hub id or a folder without safetensors is left to transformers' own checks."""
    if not Path(path).is_dir():
        return
    try:
        files = _weight_files(Path(path))
    except ValueError:  # pytorch_model.bin and other formats: from_pretrained reports what it finds
        return
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    check_checkpoint_fits(model, files, path)


class _LoadConfig:
    """The one field transformers' ZeRO-3 loader reads from its load config."""

    def __init__(self, weight_mapping):
        self.weight_mapping = weight_mapping


def _weight_files(root: Path) -> dict[str, Path]:
    """{tensor name: safetensors file} of a saved model (single file or sharded with an index)."""
    index = root / "model.safetensors.index.json"
    if index.is_file():
        names = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return {name: root / file for name, file in names.items()}
    single = root / "model.safetensors"
    if not single.is_file():
        raise ValueError(f"{root} holds no model.safetensors (or index); partitioned loading reads safetensors")
    from safetensors import safe_open

    with safe_open(str(single), framework="pt") as f:
        return {name: single for name in f.keys()}  # noqa: SIM118 (safe_open is not iterable)


def _key_groups(files: dict[str, Path]) -> list[dict[Path, list[str]]]:
    """Tensor names grouped by decoder layer (everything else in one last group), each as {file: names}."""
    groups: dict[str, dict[Path, list[str]]] = {}
    for name, file in files.items():
        m = _LAYER.match(name)
        groups.setdefault(m.group(1) if m else "", {}).setdefault(file, []).append(name)
    return [groups[k] for k in sorted(groups, key=lambda k: (k == "", k))]


def merge_adapters_partitioned(model, adapters: list, *, log=None):
    """Merge each PEFT adapter of `adapters` (in order) into partitioned base weights; returns the plain model.

    PEFT attaches the adapter (small, whole on every rank); each LoRA layer is then merged by PEFT's own
    `merge()` while only its base weight is gathered (`modifier_rank=0`: rank 0's result is re-partitioned
    to every rank), so the peak is one layer's weight, not the model.
    """
    import deepspeed
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    for i, adapter in enumerate(adapters, 1):
        if log is not None:
            log(f"merging adapter {i}/{len(adapters)} ({adapter}) layer by layer into the partitioned weights")
        peft_model = PeftModel.from_pretrained(model, str(adapter))
        for module in peft_model.modules():
            if isinstance(module, LoraLayer):
                weights = [p for p in module.base_layer.parameters(recurse=False)]
                with deepspeed.zero.GatheredParameters(weights, modifier_rank=0), torch.no_grad():
                    module.merge()
        model = peft_model.unload()  # drops the (now merged) LoRA modules, keeps the base
    return model
