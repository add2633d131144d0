"""One error policy for every entry point.

A `UserError` is something the user can fix (a config value, a path, a data record, a checkpoint): the
entry point prints it as one `<prog>: error: ...` line and exits with status 2, having written nothing
it should not have. Anything else is a bug: it keeps its traceback and exits with status 1.

Whatever the way out (success, a user error, a bug, Ctrl-C's SystemExit(130), a reward error raised on every
rank), the process leaves its torch.distributed group before the interpreter shuts down. A group left alive
is torn down by C++ static destructors while gloo's threads still run, and the process then dies with
"terminate called without an active exception" (SIGABRT): a finished run recorded as failed by the launcher.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable


class UserError(ValueError):
    """A problem with what the user gave; subclasses name the area (ConfigError, DataError, ...)."""


def run_entry_point(prog: str, main: Callable[[], int]) -> int:
    """Run `main()`; a UserError becomes one `error:` line (printed by rank 0 only) and exit status 2."""
    try:
        return main()
    except UserError as exc:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        leave_process_group()


def leave_process_group() -> None:
    """Destroy the default torch.distributed group if this process joined one (no collective: safe on an
    error path where other ranks have stopped too). Imports nothing: torch stays unloaded where it was."""
    torch_dist = sys.modules.get("torch.distributed")
    if torch_dist is not None and torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()
