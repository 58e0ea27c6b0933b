"""A run or sweep folder's name is held by one sweep at a time on a machine.

Two sweeps started together under one ``name=`` would measure every case twice into one folder
(two ``ok`` rows per case, which ``load`` and ``merge`` then refuse). So a job holds
``<root>/.attnbench.lock`` while it runs: ``fcntl.flock``, which the kernel drops when its holder
dies (a killed sweep leaves nothing to clean). The file names the holder (pid, host, start, sweep);
a job of another sweep is refused in one line naming it.

The jobs of one sweep may run at once (joblib, submitit): the first takes the lock exclusively,
writes its name, then shares it; a job whose sweep is the holder's shares it too. A sweep is known
by ``ATTNBENCH_SWEEP``, which the launching process sets (``mark_sweep``) and its workers inherit;
a job run in the launching process itself (single runs, the basic launcher, ``run_job`` called
directly) is known by its process.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from attnbench.harness.errors import UserError

LOCK = ".attnbench.lock"
SWEEP_ENV = "ATTNBENCH_SWEEP"
IN_PROCESS = ("direct", "basic")  # launchers that run every job in the launching process


def mark_sweep() -> None:
    """Name this process's sweep for the job processes it starts (call before Hydra launches them)."""
    os.environ[SWEEP_ENV] = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def sweep_id(launcher: str) -> str:
    """What the jobs of one sweep share and another sweep's jobs do not."""
    marked = os.environ.get(SWEEP_ENV)
    if launcher in IN_PROCESS or not marked:
        return f"{socket.gethostname()}:{os.getpid()}"
    return marked


def _holder(fd: int) -> dict[str, Any]:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace") or "{}")
    except json.JSONDecodeError:
        return {}
    return holder if isinstance(holder, dict) else {}


@contextmanager
def claimed(root: Path, *, launcher: str, wait_s: float = 1.0) -> Iterator[None]:
    """Hold ``root``'s name for this job's sweep; ``UserError`` naming the holder when another holds it.

    ``wait_s``: how long a job waits for a holder that has taken the lock but not yet written its name."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "started": datetime.now(UTC).isoformat(timespec="seconds"), "sweep": sweep_id(launcher)}
    fd = os.open(root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                if holder.get("sweep") == me["sweep"]:
                    fcntl.flock(fd, fcntl.LOCK_SH)  # a job of this sweep holds it: share it
                    break
                if time.monotonic() > deadline:
                    raise UserError(
                        f"results folder {root} is in use by another sweep under the same name (pid "
                        f"{holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}; "
                        f"lock {root / LOCK}): wait for it to end, or choose another name=") from None
                time.sleep(0.05)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
            fcntl.flock(fd, fcntl.LOCK_SH)  # the sweep's other jobs may share it now
            break
        yield
    finally:
        os.close(fd)
