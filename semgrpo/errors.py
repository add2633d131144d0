"""One error policy for every entry point.

A `UserError` is something the user can fix (a config value, a path, a data record, a checkpoint): the
entry point prints it as one `<prog>: error: ...` line and exits with status 2, having written nothing
it should not have. Anything else is a bug: it keeps its traceback and exits with status 1.
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
