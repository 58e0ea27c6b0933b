"""One job per GPU without a scheduler: a job holds a per-GPU lock file for as long as it runs.

Hydra's joblib launcher runs ``n_jobs`` worker processes that each take the next job from a queue;
nothing tells a worker which GPU is its own. So each job, when it starts, takes the first GPU whose
lock it can get (``fcntl.flock`` on ``<lock_dir>/<gpu id>.lock``, non-blocking), runs on
``cuda:<index>``, and releases the lock when it ends. The kernel drops a lock when its process
dies (SIGKILL, OOM killer, node reboot), so a crashed job never leaves a GPU marked busy.

- No two jobs on one GPU: a lock has one holder at a time; a job that finds every GPU held waits.
- No idle GPU while jobs remain: with ``n_jobs`` = number of GPUs (``hydra/launcher=gpus``), a job
  that starts always finds its GPU free, because the only other holders are the other workers.
- One GPU per worker: a process asks for the GPU it held last first, so each worker stays on its
  GPU (one CUDA context, one caching allocator per process) instead of touching a second one.

Locks are named by the GPU's UUID, not its CUDA index, because the index is relative to
``CUDA_VISIBLE_DEVICES``: under SLURM every one-GPU job sees ``cuda:0``, yet two such jobs on one
node hold different GPUs and must not wait for each other. The default lock folder is machine-local
(``<tmp>/attnbench-gpu-locks``) so that two sweeps started on one machine share it too, and because
``flock`` is not supported on every shared file system (Lustre without ``-o flock``).

Only ``device=auto`` and ``device=cuda`` are pinned; ``cuda:<index>`` is the user's choice and
``cpu`` has nothing to pin. On a machine without CUDA, ``auto`` stays ``auto`` (it means cpu there).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from attnbench.harness.errors import UserError
from attnbench.harness.logs import echoed

_log = logging.getLogger(__name__)

PINNED_DEVICES = ("auto", "cuda")
_LAST_INDEX: dict[str, int] = {}  # per process: the GPU each lock folder gave this process last


def default_lock_dir() -> Path:
    return Path(tempfile.gettempdir()) / "attnbench-gpu-locks"


@dataclass
class GpuLock:
    """A held GPU: its CUDA index in this process, its id and lock file. ``release()`` once."""

    index: int
    gpu_id: str
    path: Path
    fd: int

    def release(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)  # explicit: a forked child sharing the fd must not keep it
        os.close(self.fd)


def try_lock(lock_dir: Path, index: int, gpu_id: str) -> GpuLock | None:
    """The lock of one GPU if it is free now, else ``None``."""
    path = Path(lock_dir) / f"{gpu_id}.lock"
    # Read-only is enough for flock, so a lock file another user created can still be locked.
    # O_NOFOLLOW: a symbolic link planted under the lock's name (in a shared folder) is never followed.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise UserError(f"lock file {path} is a symbolic link; remove it or set gpu_lock_dir to a folder "
                            "of your own") from None
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError as error:
        os.close(fd)
        if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise UserError(f"file locks are not supported in {lock_dir} ({error.strerror}); "
                            f"set gpu_lock_dir to a folder on a local disk") from None
        raise
    return GpuLock(index=index, gpu_id=gpu_id, path=path, fd=fd)


def make_lock_dir(lock_dir: Path) -> Path:
    """Create the lock folder if it is missing; an existing folder is used as it is, never re-permissioned
    (``gpu_lock_dir`` may name a folder of the user's, whose mode is theirs)."""
    if lock_dir.is_symlink() or (lock_dir.exists() and not lock_dir.is_dir()):
        raise UserError(f"gpu_lock_dir={lock_dir} is not a folder; give a folder for the GPU lock files")
    try:
        lock_dir.mkdir(parents=True)
    except FileExistsError:
        return lock_dir  # made by the user, or by another job a moment ago: its mode stays
    # A folder we made: like /tmp (sticky, every user's jobs can add their GPUs' lock files, none can
    # remove another's). mkdir's mode is cut by the umask, hence the chmod of the folder just made.
    os.chmod(lock_dir, 0o1777)
    return lock_dir


def acquire(lock_dir: Path, gpu_ids: Sequence[str], *, prefer: int | None = None, poll_s: float = 0.1,
            on_wait: Callable[[], None] | None = None) -> GpuLock:
    """The first free GPU among ``gpu_ids`` (``prefer`` tried first), waiting while all are held."""
    assert gpu_ids, "nothing to pin: no GPU ids"
    lock_dir = make_lock_dir(Path(lock_dir))
    order = list(range(len(gpu_ids)))
    if prefer is not None and 0 <= prefer < len(gpu_ids):
        order.remove(prefer)
        order.insert(0, prefer)
    waited = False
    while True:
        for index in order:
            lock = try_lock(lock_dir, index, gpu_ids[index])
            if lock is not None:
                return lock
        if not waited and on_wait is not None:
            on_wait()
        waited = True
        time.sleep(poll_s)


def cuda_gpu_ids() -> list[str]:
    """One id per CUDA device this process sees: its UUID, else host and visible index."""
    import torch

    if not torch.cuda.is_available():
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
    ids = []
    for index in range(torch.cuda.device_count()):
        raw = getattr(torch.cuda.get_device_properties(index), "uuid", None)
        if raw is not None:  # formatted as NVML prints it (as harness.measure.telemetry matches devices)
            data = getattr(raw, "bytes", None)
            ids.append("GPU-" + (str(uuid.UUID(bytes=bytes(data))) if data is not None else str(raw)))
        else:  # a torch without UUIDs: the physical index behind CUDA_VISIBLE_DEVICES, on this host
            physical = visible[index] if index < len(visible) and visible[index] else str(index)
            ids.append(f"{socket.gethostname()}-cuda{physical}")
    return [re.sub(r"[^A-Za-z0-9_.-]", "_", gpu_id) for gpu_id in ids]  # file names


def num_gpus() -> int:
    """CUDA devices present, at least 1: ``n_jobs`` of the ``hydra/launcher=gpus`` preset."""
    import torch

    return max(1, torch.cuda.device_count())


def register_resolvers() -> None:
    """``${attnbench.num_gpus:}`` for ``conf/hydra/launcher/gpus.yaml``; call before Hydra composes."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("attnbench.num_gpus", num_gpus, replace=True)


@contextmanager
def pinned_device(device: str, *, lock_dir: Path | None = None, gpu_ids: Sequence[str] | None = None,
                  log: TextIO | None = None) -> Iterator[str]:
    """The device a job should run on, holding its GPU's lock until the block ends.

    ``gpu_ids`` injects the GPUs (tests: fake ids on a CPU machine); by default they are the CUDA
    devices present, and the chosen one becomes the process's current CUDA device. Which GPU, and
    any wait for one, is logged (Hydra's job log); ``log``, a stream, also receives those lines.
    """
    if device not in PINNED_DEVICES:
        yield device
        return
    real = gpu_ids is None
    ids = cuda_gpu_ids() if real else list(gpu_ids)
    if not ids:
        yield device  # no GPU here: auto means cpu, and cuda fails with its own message
        return
    lock_dir = Path(lock_dir).expanduser() if lock_dir is not None else default_lock_dir()
    key = str(lock_dir.resolve())

    def waiting() -> None:
        _note(logging.WARNING, f"pinning: all {len(ids)} GPUs are held by other jobs (locks in {lock_dir}); "
              "waiting for one", log)

    lock = acquire(lock_dir, ids, prefer=_LAST_INDEX.get(key), on_wait=waiting)
    _LAST_INDEX[key] = lock.index
    try:
        if real:
            import torch

            torch.cuda.set_device(lock.index)  # un-indexed CUDA calls (synchronize) go to this GPU too
        _note(logging.INFO, f"pinning: this job runs on cuda:{lock.index} ({lock.gpu_id})", log)
        yield f"cuda:{lock.index}"
    finally:
        lock.release()


def _note(level: int, message: str, log: TextIO | None) -> None:
    with echoed(log, level=level):  # only around the line: the job's own lines are not the caller's stream's
        _log.log(level, message)
