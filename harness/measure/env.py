"""The environment of a run, recorded beside its numbers, and a fingerprint of what makes them comparable.

``environment(device)`` gives the ``env_*`` columns: what ran (device, driver, CUDA, torch,
attnbench and its git commit), where (host, CPU) and when. ``fingerprint(env, **settings)`` hashes
only the fields that change timings (device, driver, CUDA, torch, CPU model and count) plus the
run's settings, so two rows with the same fingerprint can be compared and the host name or the
time of day never splits them.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType

import torch

from attnbench.harness.results import schema

Env = dict[str, str | int | None]

ENV_COLUMNS: tuple[str, ...] = schema.group("env")  # declared in harness/results/schema.py

# What makes two timings comparable. Not the host (two identical machines compare), not the time,
# not the code version (comparing two commits on one machine is the point of a benchmark).
FINGERPRINT_FIELDS: tuple[str, ...] = (
    "env_device_name", "env_driver", "env_cuda", "env_torch", "env_cpu", "env_cpu_count",
)


def cpu_model() -> str:
    """The CPU's model name: /proc/cpuinfo on Linux (x86 ``model name``, some ARM ``Processor``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Processor", "cpu model") and value.strip():
                    return value.strip()
    except OSError:
        pass  # not Linux: platform below
    return platform.processor() or platform.machine() or "unknown"


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask, as under taskset or a container's cpuset)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def git_commit(path: Path | None = None) -> str | None:
    """``git rev-parse HEAD`` of the checkout holding ``path`` (this file by default), with
    ``-dirty`` when tracked files differ from it or untracked, unignored files exist (they may be
    code the registry discovers); ``None`` outside a git checkout or without git."""
    where = str((path or Path(__file__)).resolve().parent)

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", where, *args], capture_output=True, text=True, timeout=10,
                                  check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    status = git("status", "--porcelain")
    return commit + ("-dirty" if status else "")


def package_version() -> str:
    try:
        return importlib.metadata.version("attnbench")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def driver_version(*, nvml: ModuleType | None = None) -> str | None:
    """The NVIDIA driver version NVML reports, or ``None`` where there is no NVML."""
    if nvml is None:
        try:
            import pynvml as nvml  # deferred: no NVML work at import
        except ImportError:
            return None
    try:
        nvml.nvmlInit()
    except nvml.NVMLError:
        return None
    try:
        version = nvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except nvml.NVMLError:
        return None
    finally:
        nvml.nvmlShutdown()


def environment(device: torch.device | str, *, nvml: ModuleType | None = None) -> Env:
    """The ``ENV_COLUMNS`` for a run on ``device``. ``env_driver`` is read for CUDA devices only:
    on a CPU run it is not part of what was measured. ``nvml`` defaults to ``pynvml``."""
    dev = torch.device(device)
    cpu = cpu_model()
    index: int | None = None
    driver: str | None = None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {dev} was asked for but torch.cuda.is_available() is False")
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        if not 0 <= index < torch.cuda.device_count():
            raise ValueError(f"device {dev}: there are {torch.cuda.device_count()} CUDA devices")
        name = torch.cuda.get_device_name(index)
        driver = driver_version(nvml=nvml)
    elif dev.type == "cpu":
        name = cpu
    else:
        raise ValueError(f"device type {dev.type!r} is not supported; use cpu or cuda")
    env: Env = {
        "env_device_name": name,
        "env_device_index": index,
        "env_driver": driver,
        "env_cuda": torch.version.cuda,
        "env_torch": torch.__version__,
        "env_attnbench": package_version(),
        "env_git_commit": git_commit(),
        "env_host": socket.gethostname(),
        "env_cpu": cpu,
        "env_cpu_count": cpu_count(),
        "env_python": platform.python_version(),
        "env_time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    assert tuple(env) == ENV_COLUMNS
    return env


def fingerprint(env: Env, **settings: object) -> str:
    """16 hex digits of SHA-256 over ``FINGERPRINT_FIELDS`` of ``env`` and the keyword ``settings``
    (dtype, compile mode, thread count...). Setting values are hashed as ``str``, so ``torch.bfloat16``
    and ``"torch.bfloat16"`` agree but ``"bfloat16"`` does not: pass each setting in one spelling."""
    missing = [k for k in FINGERPRINT_FIELDS if k not in env]
    if missing:
        raise ValueError(f"env lacks {missing}; build it with environment(device)")
    payload = {"env": {k: env[k] for k in FINGERPRINT_FIELDS}, "settings": {k: str(v) for k, v in settings.items()}}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
