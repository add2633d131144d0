"""Which models an evaluation compares, and how they are loaded with one copy of the base in memory.

A model is the base itself, a stack of LoRA adapters on the base (a run of ours: its adapter plus the
adapters of the runs it started from, see `lineage.adapter_chain`), or a full-weight model directory.
Adapters are loaded side by side and all activated (LoRA deltas add up, which equals merging them one
after another), so `disable_adapter()` gives back the exact base for the KL and NLL comparisons and
`unload()` restores it for the next model.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from semgrpo.config import ConfigError
from semgrpo.lineage import adapter_chain, run_config
from semgrpo.modeling import TORCH_DTYPES, check_model_source


@dataclass
class ModelSpec:
    """One evaluated model: the base plus `adapters` in order, or a full-weight model at `full_path`."""

    name: str
    source: str
    adapters: list[Path] = field(default_factory=list)
    full_path: str = ""


def resolve_model(name: str, path: str) -> ModelSpec:
    """A run output_dir, a checkpoint, an adapter directory, or a full model directory -> its spec."""
    p = Path(path)
    if not p.is_dir():
        raise ConfigError(f"model {name!r}: {path!r} is not a directory")
    if (p / "adapter_config.json").is_file() or (p / "checkpoints").is_dir() or (p / "adapter").is_dir():
        return ModelSpec(name=name, source=str(path), adapters=adapter_chain(str(path)))
    if (p / "config.json").is_file() and "model_type" in json.loads((p / "config.json").read_text("utf-8")):
        return ModelSpec(name=name, source=str(path), full_path=str(path))
    raise ConfigError(f"model {name!r}: {path!r} holds no adapter, run checkpoint or Hugging Face model")


def specs_from_run(run_dir: str) -> tuple[str, list[ModelSpec]]:
    """The base path and every stage of a run: base, each run it started from, the run itself.

    Stages are named by their folder (the demo: base, cold_start, grpo); the final stage of a GRPO run
    is named "grpo".
    """
    cfg = run_config(run_dir)
    if cfg is None:
        raise ConfigError(f"--run {run_dir!r} is not a run directory (config.json and checkpoints/ expected)")
    chain = adapter_chain(run_dir)
    specs = [ModelSpec(name="base", source=cfg["model"]["path"])]
    for depth in range(1, len(chain) + 1):
        stage_dir = chain[depth - 1].parents[2] if chain[depth - 1].parent.parent.name == "checkpoints" \
            else chain[depth - 1]
        name = stage_dir.name
        if depth == len(chain) and "tau" in _summary(run_dir):
            name = "grpo"
        specs.append(ModelSpec(name=name, source=str(stage_dir), adapters=chain[:depth]))
    return cfg["model"]["path"], specs


def checkpoint_specs(run_dir: str, final: ModelSpec) -> list[ModelSpec]:
    """The run's last stage at every complete checkpoint, oldest first, each named ``<stage>@<step>``: the
    points of a learning curve. The earlier stages' adapters stay as they are; the run's own adapter is the
    checkpoint's."""
    from semgrpo.checkpoint import list_checkpoints

    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        raise ConfigError(f"--checkpoints all: {run_dir!r} has no complete checkpoint")
    return [ModelSpec(name=f"{final.name}@{step}", source=str(path), adapters=[*final.adapters[:-1], path / "adapter"])
            for step, path in checkpoints]


def _summary(run_dir: str) -> dict:
    path = Path(run_dir) / "summary.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError:
        return {}


def check_adapter(adapter: str | Path) -> None:
    """Fail with one line naming the file when an adapter directory is incomplete or its files are cut short.

    Reads `adapter_config.json` and the header of `adapter_model.safetensors` (which must cover the whole
    file), so a truncated copy is reported before the base model is loaded, not as a traceback later.
    """
    from safetensors import SafetensorError, safe_open

    adapter = Path(adapter)
    cfg_file = adapter / "adapter_config.json"
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"adapter config {str(cfg_file)!r} is unreadable or truncated ({exc})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"adapter config {str(cfg_file)!r} is not a JSON object")
    weights = adapter / "adapter_model.safetensors"
    if not weights.is_file():
        if (adapter / "adapter_model.bin").is_file():
            return  # the pickled format has no header to check; torch reports it on load
        raise ConfigError(f"adapter {str(adapter)!r} has no adapter_model.safetensors")
    try:
        with safe_open(str(weights), framework="pt") as f:
            if not list(f.keys()):
                raise ConfigError(f"adapter weights {str(weights)!r} hold no tensors")
    except SafetensorError as exc:
        raise ConfigError(f"adapter weights {str(weights)!r} are truncated or corrupt ({exc})") from None


def logits_fn(model):
    """``fn(input_ids, attention_mask) -> logits [B, T, V]`` of `model` (the form `ood.drift_per_token` takes)."""
    return lambda ids, mask: model(input_ids=ids, attention_mask=mask, use_cache=False).logits


class ModelBench:
    """The base model on `device`; `use(spec)` yields the evaluated model and a base-logits function."""

    def __init__(self, base_path: str, *, dtype: str, device: torch.device):
        from transformers import AutoModelForCausalLM

        self.base_path, self.dtype, self.device = check_model_source(base_path, "--base"), dtype, device
        self.base = AutoModelForCausalLM.from_pretrained(self.base_path, dtype=TORCH_DTYPES[dtype]).to(device)
        self.base.eval()

    @contextlib.contextmanager
    def use(self, spec: ModelSpec):
        if spec.full_path:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(spec.full_path, dtype=TORCH_DTYPES[self.dtype])
            model.to(self.device).eval()
            yield model, logits_fn(self.base)
            del model
        elif not spec.adapters:
            yield self.base, logits_fn(self.base)
        else:
            from peft import PeftModel

            names = [f"stage{i}" for i in range(len(spec.adapters))]
            model = PeftModel.from_pretrained(self.base, str(spec.adapters[0]), adapter_name=names[0])
            for name, adapter in zip(names[1:], spec.adapters[1:]):
                model.load_adapter(str(adapter), adapter_name=name)
            model.base_model.set_adapter(names)
            model.eval()

            def base_logits(ids, mask):
                with model.disable_adapter():
                    return logits_fn(model)(ids, mask)
            try:
                yield model, base_logits
            finally:
                self.base = model.unload()  # the LoRA layers out again: the pristine base for the next model

    @contextlib.contextmanager
    def use_all(self, specs: list[ModelSpec]):
        """Every model of `specs` at once, for passes that compare them batch by batch against one base forward:
        yields ``({name: logits_fn}, base_logits_fn)``. Adapters are loaded side by side into one PEFT model
        and each model's own set is activated for its forward; full-weight models are loaded each."""
        fns, full, model, names = {}, [], None, {}
        for i, spec in enumerate(specs):
            if spec.full_path:
                from transformers import AutoModelForCausalLM

                m = AutoModelForCausalLM.from_pretrained(spec.full_path, dtype=TORCH_DTYPES[self.dtype])
                full.append(m.to(self.device).eval())
                fns[spec.name] = logits_fn(full[-1])
                continue
            for j, adapter in enumerate(spec.adapters):
                from peft import PeftModel

                name = f"m{i}s{j}"
                if model is None:
                    model = PeftModel.from_pretrained(self.base, str(adapter), adapter_name=name)
                else:
                    model.load_adapter(str(adapter), adapter_name=name)
                names.setdefault(spec.name, []).append(name)
        if model is not None:
            model.eval()

        def base_logits(ids, mask):
            if model is None:
                return logits_fn(self.base)(ids, mask)
            with model.disable_adapter():
                return logits_fn(model)(ids, mask)

        def with_adapters(active):
            def fn(ids, mask):
                model.base_model.set_adapter(active)
                return logits_fn(model)(ids, mask)
            return fn

        for spec in specs:
            if spec.name in names:
                fns[spec.name] = with_adapters(names[spec.name])
            elif not spec.full_path:
                fns[spec.name] = base_logits  # the base itself
        try:
            yield fns, base_logits
        finally:
            if model is not None:
                self.base = model.unload()  # every LoRA layer out again: the pristine base
            del full
