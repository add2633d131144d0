"""Ctrl-C during training: the first one finishes the step, saves and exits 130; a second one exits at once.

    with GracefulInterrupt() as interrupt:
        for step in ...:
            ...one step...
            if interrupt.should_stop():          # collective: every rank calls it at every step end
                path = save_checkpoint(...)
                interrupt.exit(step + 1, path)   # one line on stderr (rank 0), SystemExit(130)

Under the deepspeed launcher SIGINT reaches every rank, but not at the same instant: a rank may see it
one step later than another. `should_stop` therefore sums each rank's flag over all ranks (one scalar
all-reduce per step), so every rank stops after the same step and they all save that step together.
"""
from __future__ import annotations

import os
import signal
import sys
import threading

import torch

from semgrpo import dist
from semgrpo.dist import sum_across

EXIT_CODE = 130  # 128 + SIGINT, what a shell reports for a Ctrl-C


def _prog() -> str:
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "semgrpo"


class GracefulInterrupt:
    """Catch SIGINT while active; restore the previous handler on exit.

    Outside the main thread (where Python cannot install signal handlers) it does nothing: `should_stop`
    still takes part in the collective, with this rank's flag never set.
    """

    def __init__(self):
        self.requested = False
        self._previous = None
        self._installed = False

    def __enter__(self) -> GracefulInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False

    def _handle(self, signum, frame) -> None:
        if self.requested:  # the second Ctrl-C: leave now, whatever is half done (.tmp- dirs are cleaned later)
            if dist.is_main():
                os.write(2, f"{_prog()}: interrupted again: exiting without saving\n".encode())
            os._exit(EXIT_CODE)
        self.requested = True
        if dist.is_main():
            os.write(2, f"{_prog()}: Ctrl-C: finishing this step and saving (Ctrl-C again to quit now)\n".encode())

    def should_stop(self) -> bool:
        """Collective: True on every rank when any rank has been interrupted."""
        flag = torch.tensor([1.0 if self.requested else 0.0], dtype=torch.float64)
        return bool(sum_across(flag)[0] > 0)

    def exit(self, step: int, path) -> None:
        """Say where the run stopped (rank 0) and leave with status 130."""
        if dist.is_main():
            print(f"{_prog()}: interrupted at step {step}: saved {path}; resume with the same command",
                  file=sys.stderr, flush=True)
        raise SystemExit(EXIT_CODE)
