"""Which files of a package a call runs through, following the calls its code makes (used by test_step_files.py).

`follow(call, root=fn, package=..., libraries=...)` runs `call()` under `sys.setprofile` and sorts every Python function
of the package that ran into one of three kinds:

  followed   `fn` itself, and what followed code calls: the files a reader opens to follow `fn`;
  library    a file under one of `libraries` (sub-packages with a public API of their own) entered from followed
             code; the reader reads the call, not the library's inside, which is not followed further;
  callback   package code that ran but was not called by followed code: a third-party library calling back
             (DeepSpeed stepping an LR schedule, transformers calling a head whose forward was swapped), or code run
             before the root was entered. Not a call the reader of `fn` follows.

"Called by" looks through the plumbing of decorators and context managers (contextlib, functools, torch's
no_grad wrapper, dataclass-generated methods), which only forward a call. Only the calling thread is traced.
"""
from __future__ import annotations

import contextlib
import functools
import sys
from pathlib import Path

# Frames that only forward a call: a `with` block's __enter__/__exit__, decorator wrappers, generated __init__.
_PLUMBING = {contextlib.__file__, functools.__file__, "<string>"}
with contextlib.suppress(ImportError):
    import torch.utils._contextlib as _torch_contextlib

    _PLUMBING.add(_torch_contextlib.__file__)


def follow(call, *, root, package: Path, libraries: tuple[str, ...] = ()) -> tuple[object, dict]:
    """(call()'s result, {"followed": {file: first entry}, "library": {file: [entry functions]},
    "callback": {file: first entry}}), files relative to `package`; an entry is "function <- caller"."""
    prefix = str(Path(package).resolve()) + "/"
    followed_frames: set = set()
    report: dict = {"followed": {}, "library": {}, "callback": {}}

    def relative(frame) -> str | None:
        if frame is None:
            return None
        path = frame.f_code.co_filename
        return path[len(prefix):] if path.startswith(prefix) else None

    def caller_of(frame):
        up = frame.f_back
        while up is not None and up.f_code.co_filename in _PLUMBING:
            up = up.f_back
        return up

    def describe(frame, caller) -> str:
        where = relative(caller) if caller is not None else None
        return f"{frame.f_code.co_name} <- {where}:{caller.f_code.co_name}" if where else frame.f_code.co_name

    def profile(frame, event, arg):
        if event == "return":
            followed_frames.discard(frame)
            return
        if event != "call":
            return
        rel = relative(frame)
        if rel is None:
            return
        caller = caller_of(frame)
        if frame.f_code is root_code or caller in followed_frames:
            if rel.startswith(libraries):
                report["library"].setdefault(rel, [])
                if frame.f_code.co_name not in report["library"][rel]:
                    report["library"][rel].append(frame.f_code.co_name)
            else:
                followed_frames.add(frame)
                report["followed"].setdefault(rel, describe(frame, caller))
        elif not rel.startswith(libraries):  # a library's inside, reached from outside the step, is not reported
            report["callback"].setdefault(rel, describe(frame, caller))

    root_code = getattr(root, "__wrapped__", root).__code__
    sys.setprofile(profile)
    try:
        result = call()
    finally:
        sys.setprofile(None)
    return result, report
