"""Run a training entry point in this process with probes; gpu_check's demo step uses it to show what ran.

    python benchmarks/gpu/probe.py RECORD.json bin/train_grpo.py [ARGS...]

The script runs as ``python SCRIPT ARGS`` would run it. Probes, installed before it imports anything:

* every ``torch.distributed`` collective: its name, the device type and dtype of its first tensor, and the
  backend of its process group serving that device (``cpu:gloo,cuda:nccl`` gives ``nccl`` for a CUDA tensor);
* every collective of ``semgrpo.dist`` (``gather_cat``, ``sum_across``, ...): the same, and whether it reached
  torch.distributed (with one process it does only under ``SEMGRPO_FORCE_COLLECTIVES=1``);
* every ``deepspeed.initialize``: whether the engine runs bf16 or fp16, and the dtypes of its module's parameters;
* peak GPU memory allocated.

RECORD.json is written when the script ends, whether it returns, exits or raises (the exception is re-raised).
"""

from __future__ import annotations

import collections
import functools
import json
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

TORCH_COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor",
                     "reduce_scatter", "broadcast", "all_to_all_single", "all_gather_object",
                     "broadcast_object_list", "reduce", "gather", "scatter", "barrier")
SEMGRPO_COLLECTIVES = ("gather_cat", "sum_across", "broadcast_object", "raise_on_any_rank")


def _first_tensor(args, kwargs):
    import torch

    for value in list(args) + list(kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value
        if isinstance(value, (list, tuple)):
            for item in value:
                if isinstance(item, torch.Tensor):
                    return item
    return None


def _backend_for(device_type: str, group) -> str:
    """The backend that serves tensors of ``device_type`` in ``group`` (the default group when None)."""
    import torch.distributed as dist

    try:
        config = dist.get_backend_config(group) if group is not None else dist.get_backend_config()
    except Exception:  # not initialised yet, or an old torch
        return "?"
    if ":" not in config:
        return config
    parts = dict(part.split(":", 1) for part in config.split(","))
    return parts.get(device_type, "?")


class Probe:
    def __init__(self):
        self.torch_calls = collections.Counter()  # (op, device, dtype, backend) -> calls
        self.semgrpo_calls = collections.Counter()  # (op, device, dtype, backend, reached torch) -> calls
        self.engines: list[dict] = []
        self.in_torch = 0  # torch.distributed calls so far, to tell whether a semgrpo collective reached one

    def _describe(self, args, kwargs):
        t = _first_tensor(args, kwargs)
        device = t.device.type if t is not None else "-"
        dtype = str(t.dtype).replace("torch.", "") if t is not None else "-"
        return device, dtype, _backend_for(device if t is not None else "cpu", kwargs.get("group"))

    def wrap_torch(self, name, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            self.in_torch += 1
            self.torch_calls[(name, *self._describe(args, kwargs))] += 1
            return fn(*args, **kwargs)

        return wrapper

    def wrap_semgrpo(self, name, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            before = self.in_torch
            try:
                return fn(*args, **kwargs)
            finally:
                self.semgrpo_calls[(name, *self._describe(args, kwargs), self.in_torch > before)] += 1

        return wrapper

    def wrap_initialize(self, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            out = fn(*args, **kwargs)
            engine = out[0]
            dtypes = collections.Counter(str(p.dtype).replace("torch.", "") for p in engine.module.parameters())
            self.engines.append(dict(bf16=bool(engine.bfloat16_enabled()), fp16=bool(engine.fp16_enabled()),
                                     zero_stage=int(engine.zero_optimization_stage()),
                                     training=engine.optimizer is not None, param_dtypes=dict(dtypes)))
            return out

        return wrapper

    def install(self) -> None:
        import deepspeed
        import torch.distributed as dist
        import torch.distributed.distributed_c10d as c10d

        import semgrpo.dist as sdist

        for name in TORCH_COLLECTIVES:
            for module in (dist, c10d):  # DeepSpeed calls some through distributed_c10d
                if hasattr(module, name):
                    setattr(module, name, self.wrap_torch(name, getattr(module, name)))
        # before the entry point imports the modules that bind these names (`from semgrpo.dist import ...`)
        for name in SEMGRPO_COLLECTIVES:
            setattr(sdist, name, self.wrap_semgrpo(name, getattr(sdist, name)))
        deepspeed.initialize = self.wrap_initialize(deepspeed.initialize)

    def record(self) -> dict:
        import torch

        peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() and torch.cuda.is_initialized() else 0
        keys = ("op", "device", "dtype", "backend")
        return dict(
            torch_collectives=[dict(zip(keys, k), calls=n) for k, n in sorted(self.torch_calls.items())],
            semgrpo_collectives=[dict(zip((*keys, "reached_torch"), k), calls=n)
                                 for k, n in sorted(self.semgrpo_calls.items())],
            engines=self.engines, peak_gpu_memory_bytes=int(peak))


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: gpu/probe.py RECORD.json SCRIPT [ARGS...]", file=sys.stderr)
        return 2
    record, script, *args = argv
    sys.path.insert(0, str(ROOT))
    probe = Probe()
    probe.install()
    sys.argv = [script, *args]
    code = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        code = 1
        raise
    finally:
        Path(record).write_text(json.dumps(dict(probe.record(), exit_code=code), indent=1))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
