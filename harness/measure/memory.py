"""Memory of one step: its peak, what the device has free, and what tensors hold.

All sizes are in bytes. On CUDA the caching allocator keeps exact statistics; on CPU there is no
such allocator, so the peak is rebuilt from the profiler's allocation events (tensor memory only,
not process RSS, which also counts the Python heap, libraries and freed-but-not-returned pages).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import torch
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

T = TypeVar("T")


def step_peak_bytes(fn: Callable[[], object], device: torch.device | str, *, resident_bytes: int) -> int:
    """Peak bytes held by tensors while ``fn`` runs once.

    CUDA: the allocator's peak (``max_memory_allocated`` after a reset), which already includes
    every live tensor on the device (weights, cache, inputs, and anything else the process holds
    there), so ``resident_bytes`` is not added. CPU: ``resident_bytes`` (what the live tensors
    hold before the call; see ``tensor_bytes``) plus the peak of allocations made during the call,
    the output included. The CPU path runs ``fn`` under the profiler, whose first start in a
    process takes about a second.
    """
    device = _checked_device(device)
    if isinstance(resident_bytes, bool) or not isinstance(resident_bytes, int) or resident_bytes < 0:
        raise ValueError(f"resident_bytes={resident_bytes!r} is not allowed: it must be an integer >= 0")
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # earlier work must not free or allocate inside the window
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    return resident_bytes + _cpu_transient_peak_bytes(fn)


def held_after(fn: Callable[[], T], device: torch.device | str) -> tuple[T, int]:
    """``fn()`` and the net bytes of tensor memory it left allocated (e.g. what a prepared step holds:
    masks, folded weights), which ``tensor_bytes`` cannot reach inside a closure. CUDA: the
    allocator's counter before and after; CPU: the profiler's allocation events during the call."""
    device = _checked_device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        out = fn()
        torch.cuda.synchronize(device)
        return out, torch.cuda.memory_allocated(device) - before
    with _quiet_native_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    return out, max(0, sum(e.nbytes() for e in _cpu_memory_events(prof)))


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Silence kineto's "USDT ... profiler_start/stop" lines, printed by C++ straight to fd 2 on
    every profiler session (no log level turns them off); Python exceptions still propagate."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cpu_transient_peak_bytes(fn: Callable[[], object]) -> int:
    with _quiet_native_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()  # held until the profiler stops, so its allocation counts and its free does not
    running = peak = 0
    for event in _cpu_memory_events(prof):
        running += event.nbytes()
        peak = max(peak, running)
    del out
    # Frees of tensors allocated before the call push the total below zero; they don't lower the peak.
    return peak


def _cpu_memory_events(prof: profile) -> list:
    # kineto's "[memory]" events carry signed sizes: + for an allocation, - for a free.
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    events.sort(key=lambda e: e.start_ns())  # stable: same-time events keep the recorded order
    return events


def total_memory_bytes(device: torch.device | str) -> int:
    """The device's whole memory (CUDA) or the host's physical memory (CPU): a figure's ceiling."""
    device = _checked_device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def available_bytes(device: torch.device | str) -> int:
    """Bytes that a new allocation on ``device`` can use now, to skip cases that would not fit.

    CUDA: the driver's free memory (``mem_get_info``); blocks cached by PyTorch's allocator but
    unused are not counted (call ``torch.cuda.empty_cache()`` first to return them). CPU:
    ``MemAvailable`` from /proc/meminfo, lowered to the cgroup v2 limit's headroom when a container
    sets one (a container's OOM killer acts on its cgroup, not on the host's free memory).
    """
    device = _checked_device(device)
    if device.type == "cuda":
        free_bytes, _total_bytes = torch.cuda.mem_get_info(device)
        return free_bytes
    available = _meminfo_available_bytes()
    headroom = _cgroup_headroom_bytes()
    return available if headroom is None else min(available, headroom)


def _meminfo_available_bytes() -> int:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:  # not Linux: free physical pages from POSIX sysconf
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024  # /proc/meminfo reports kB
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")  # kernels before 3.14


def _cgroup_headroom_bytes(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    try:
        limit = (root / "memory.max").read_text().strip()
        current = (root / "memory.current").read_text().strip()
    except OSError:
        return None
    if limit == "max":
        return None
    return max(0, int(limit) - int(current))


def tensor_bytes(*items: Tensor | nn.Module) -> int:
    """Bytes of the storages behind tensors and modules' parameters and buffers, each counted once.

    A view keeps its whole storage alive, so a storage counts in full; storages shared between
    arguments (tied weights, a cache field that is a slice of a packed buffer) count once.
    """
    seen: set[tuple[torch.device, int]] = set()
    total = 0
    for item in items:
        if isinstance(item, nn.Module):
            tensors = [*item.parameters(), *item.buffers()]
        elif isinstance(item, Tensor):
            tensors = [item]
        else:
            raise ValueError(f"tensor_bytes takes tensors and nn.Modules, got {type(item).__name__}")
        for tensor in tensors:
            storage = tensor.untyped_storage()
            key = (tensor.device, storage.data_ptr())
            if storage.data_ptr() != 0 and key in seen:  # ptr 0: empty or meta, nothing to share
                continue
            seen.add(key)
            total += storage.nbytes()
    return total


def _checked_device(device: torch.device | str) -> torch.device:
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device={str(device)!r} is not supported: memory is measured on cpu or cuda")
    return device
