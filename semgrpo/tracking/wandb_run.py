"""The wandb side of a RunTracker (`run.report_to: [wandb]`): the run, continued across resumed sessions,
and the probe that decides whether it logs online or offline.

wandb is imported only when a WandbRun is built; importing semgrpo never imports it.
"""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

WANDB_DEFAULT_URL = "https://api.wandb.ai"
WANDB_DIR = "wandb"
SAMPLE_COLUMNS = ("prompt", "completion", "reference", "reward")


def wandb_reachable(timeout: float = 2.0) -> bool:
    """Whether a TCP connection to the wandb server opens within `timeout` seconds.

    The server is WANDB_BASE_URL's host (its port, else 443; 80 for http://), by default api.wandb.ai.
    """
    url = os.environ.get("WANDB_BASE_URL") or WANDB_DEFAULT_URL
    parts = urlsplit(url if "://" in url else f"https://{url}")
    if not parts.hostname:
        return False
    try:
        port = parts.port or (80 if parts.scheme == "http" else 443)
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


class WandbRun:
    """One wandb run for the tracker's output_dir, continued across resumed sessions.

    `sent_before` is the last step an earlier session committed to this run: wandb keeps the first value
    logged at a step and drops out-of-order steps, so those steps are not sent again. wandb holds a step's
    row until a later step is logged (or the run finishes), so `committed` trails the last step logged.
    """

    def __init__(self, output_dir: Path, *, run_id: str, sent_before: int, config: dict | None, job: str):
        import wandb

        self._wandb = wandb
        self.run_id = run_id
        self.sent_before = self.committed = sent_before
        self._pending: int | None = None
        start = lambda mode: wandb.init(
            project=os.environ.get("WANDB_PROJECT") or "semgrpo",
            name=os.environ.get("WANDB_NAME") or output_dir.resolve().name,
            id=run_id, resume="allow", dir=str(output_dir), config=config, mode=mode, job_type=job,
            reinit="create_new", settings=wandb.Settings(console="off"),  # the progress bar stays off its logs
        )
        if os.environ.get("WANDB_MODE"):  # the user's choice, obeyed as is
            self.run = start(None)
            return
        why = None
        if not wandb_reachable():
            why = f"{os.environ.get('WANDB_BASE_URL') or WANDB_DEFAULT_URL} is not reachable"
        else:
            try:
                self.run = start(None)
                return
            except wandb.errors.Error as e:  # e.g. no API key: a tracker must not end the run
                why = f"the online start failed ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        print(f"semgrpo: wandb: {why}; logging offline to {output_dir / WANDB_DIR}; upload it later with: "
              f"wandb sync {output_dir / WANDB_DIR}", file=sys.stderr, flush=True)
        self.run = start("offline")

    def log(self, step: int, data: dict[str, Any]) -> None:
        if step <= self.sent_before:
            return
        if self._pending is not None and step > self._pending:
            self.committed = max(self.committed, self._pending)
        self._pending = step if self._pending is None else max(self._pending, step)
        self.run.log(data, step=step)

    def log_samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        table = self._wandb.Table(columns=list(SAMPLE_COLUMNS), data=[[r[k] for k in SAMPLE_COLUMNS] for r in rows])
        self.log(step, {"samples": table})

    def finish(self) -> None:
        self.run.finish()
        if self._pending is not None:
            self.committed = max(self.committed, self._pending)
