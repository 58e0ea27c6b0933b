"""Measured ceilings of a device: achieved copy bandwidth and dense matmul rate, once per device.

A roofline drawn from datasheet peaks flatters no one: boost clocks, power caps, ECC and the
memory system of the actual machine decide what is reachable. ``ceilings(device, dtype, ...)``
measures both roofs on the device itself and caches them as JSON under ``cache_dir``, keyed by the
environment fingerprint (``harness.measure.env``) of the device and the calibration's own settings, so a
driver or torch upgrade or another machine measures again, and everything else reads the file.

- Copy bandwidth: ``dst.copy_(src)`` over ``size_bytes`` moves ``2 * size_bytes`` (one read, one
  write); the buffer is sized well past the last-level cache (1 GiB on CUDA, capped at an eighth of
  the device; 256 MiB on CPU, which CPUs with very large L3 caches may still partly hold).
- Matmul rate: a square ``n x n`` matmul is ``2 n^3`` FLOPs. CUDA uses n = 8192, large enough to
  reach the tensor-core plateau; on CPU n grows (256 ... 2048) until one call takes ~50 ms.
- Each is the median over several repetitions after warm-up; CUDA is timed with events (no host
  overhead in the interval), CPU with ``perf_counter``. Repetitions repeat the call enough times
  to last ~20 ms so that short calls are not lost in timer resolution or launch gaps.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from harness.files import atomic_write
from harness.measure.env import environment, fingerprint

CPU_COPY_BYTES = 256 << 20
CUDA_COPY_BYTES = 1 << 30
CUDA_MATMUL_N = 8192
CPU_MATMUL_SIZES = (256, 512, 1024, 1536, 2048)
CPU_MATMUL_TARGET_S = 0.05  # one CPU matmul lasts at least this long, up to the largest size
REP_TARGET_S = 0.02  # each timed repetition lasts at least about this long
REPS = {"cpu": 5, "cuda": 10}
MAX_INNER = 10_000


@dataclass(frozen=True)
class Ceilings:
    copy_gbps: float  # achieved, counting read + write bytes, 1e9 B/s
    matmul_tflops: float  # achieved dense matmul rate, 1e12 FLOP/s
    device_name: str
    dtype: str  # torch dtype name without "torch.", e.g. "bfloat16"
    fingerprint: str  # harness.measure.env.fingerprint of the device and this calibration's settings
    measured_at: str  # ISO 8601, UTC

    def __post_init__(self) -> None:
        for name in ("copy_gbps", "matmul_tflops"):
            value = getattr(self, name)
            if not (isinstance(value, float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name}={value!r} must be a positive finite float")


def dtype_of(dtype: torch.dtype | str) -> torch.dtype:
    """``torch.bfloat16``, ``"bfloat16"`` or ``"torch.bfloat16"`` -> ``torch.bfloat16``."""
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"dtype {dtype!r} is not a torch dtype")
    return value


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _clock(device: torch.device) -> Callable[[Callable[[], object], int], float]:
    """A function timing ``inner`` back-to-back calls of ``fn`` on ``device``, in seconds."""
    if device.type == "cuda":
        def cuda_time(fn: Callable[[], object], inner: int) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3  # elapsed_time is in ms
        return cuda_time

    def cpu_time(fn: Callable[[], object], inner: int) -> float:
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        return time.perf_counter() - t0
    return cpu_time


def median_call_s(fn: Callable[[], object], device: torch.device, *, reps: int | None = None) -> float:
    """Median seconds per call of ``fn`` after warm-up, in repetitions of ~``REP_TARGET_S`` each."""
    clock = _clock(device)
    clock(fn, 1)  # warm-up: allocator, kernel selection, cuBLAS handle, page faults
    one_s = clock(fn, 1)
    inner = max(1, min(MAX_INNER, math.ceil(REP_TARGET_S / max(one_s, 1e-9))))
    times = [clock(fn, inner) / inner for _ in range(reps or REPS.get(device.type, 5))]
    return statistics.median(times)


def default_copy_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return min(CUDA_COPY_BYTES, torch.cuda.get_device_properties(device).total_memory // 8)
    return CPU_COPY_BYTES


def _generator(device: torch.device) -> torch.Generator:
    # A local generator: calibration must not move the global RNG that tests and runs seed.
    return torch.Generator(device=device).manual_seed(0)


def _random(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.randn(n, n, generator=_generator(device), device=device).to(dtype)


def matmul_n(device: torch.device, dtype: torch.dtype) -> int:
    """Matmul size: fixed on CUDA; on CPU the first of ``CPU_MATMUL_SIZES`` whose call lasts
    ``CPU_MATMUL_TARGET_S``. CPU rates climb steeply up to n ~ 1024 (packing and threading overheads),
    so the largest affordable size is the ceiling; a slow dtype (float16 without native CPU support
    runs ~50x slower than float32) stops early and keeps calibration short."""
    if device.type == "cuda":
        return CUDA_MATMUL_N
    for n in CPU_MATMUL_SIZES:
        a = _random(n, dtype, device)
        a @ a  # warm-up
        fastest_s = math.inf
        for _ in range(2):  # the faster of two: a shared CPU's hiccups only ever add time
            t0 = time.perf_counter()
            a @ a
            fastest_s = min(fastest_s, time.perf_counter() - t0)
        if fastest_s >= CPU_MATMUL_TARGET_S:
            return n
    return CPU_MATMUL_SIZES[-1]


def measure(device: torch.device, dtype: torch.dtype, *, size_bytes: int) -> tuple[float, float]:
    """Measured (copy GB/s counting read + write, matmul TFLOP/s) for ``dtype`` on ``device``."""
    numel = max(1, size_bytes // dtype.itemsize)
    src = torch.zeros(numel, dtype=dtype, device=device)  # zeros, not empty: pages are touched now
    dst = torch.empty_like(src)
    copy_s = median_call_s(lambda: dst.copy_(src), device)
    moved = 2 * numel * dtype.itemsize
    del src, dst

    n = matmul_n(device, dtype)
    a, b = _random(n, dtype, device), _random(n, dtype, device)
    out = torch.empty(n, n, dtype=dtype, device=device)
    matmul_s = median_call_s(lambda: torch.mm(a, b, out=out), device)
    return moved / copy_s / 1e9, 2 * n**3 / matmul_s / 1e12


def _settings(device: torch.device, dtype: torch.dtype, size_bytes: int) -> dict[str, object]:
    settings: dict[str, object] = {"calibration": "copy+matmul/1", "dtype": _dtype_name(dtype),
                                   "copy_bytes": size_bytes}
    if device.type == "cpu":
        settings["torch_threads"] = torch.get_num_threads()  # the CPU matmul rate scales with it
    if dtype == torch.float32:
        # "high"/"medium" let float32 matmuls run on TF32/bf16 units: a different roof.
        settings["float32_matmul_precision"] = torch.get_float32_matmul_precision()
    return settings


def _read(path: Path, *, fp: str, dtype: str) -> Ceilings | None:
    """The cached ceilings, or ``None`` (with a warning if the file exists but is unusable)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        cached = Ceilings(**data)
        if cached.fingerprint != fp or cached.dtype != dtype:
            raise ValueError(f"holds fingerprint {cached.fingerprint} / {cached.dtype}, not {fp} / {dtype}")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:  # JSONDecodeError is a ValueError
        warnings.warn(f"ignoring calibration cache {path} ({type(exc).__name__}: {exc}); measuring again",
                      RuntimeWarning, stacklevel=3)
        return None
    return cached


def ceilings(device: torch.device | str, dtype: torch.dtype | str, *, cache_dir: Path,
             force: bool = False, size_bytes: int | None = None) -> Ceilings:
    """Copy and matmul ceilings of ``device`` for ``dtype``: read from ``cache_dir`` if measured
    before on this fingerprint, else measured now (or whenever ``force``) and cached.

    ``size_bytes`` overrides the copy buffer size (tests use a tiny one); it is part of the cache
    key, since a buffer that fits in cache measures the cache, not memory.
    """
    dev = torch.device(device)
    dt = dtype_of(dtype)
    if not dt.is_floating_point:
        raise ValueError(f"dtype {dt} is not a floating dtype; ceilings are measured for float matmuls")
    if size_bytes is not None and (isinstance(size_bytes, bool) or not isinstance(size_bytes, int)
                                   or size_bytes < dt.itemsize):
        raise ValueError(f"size_bytes={size_bytes!r} must be an int of at least one {dt} element")
    env = environment(dev)  # raises ValueError for a CUDA device that is not there
    size = size_bytes if size_bytes is not None else default_copy_bytes(dev)
    name = _dtype_name(dt)
    fp = fingerprint(env, **_settings(dev, dt, size))
    path = Path(cache_dir).expanduser() / f"ceilings-{name}-{fp}.json"
    if not force:
        cached = _read(path, fp=fp, dtype=name)
        if cached is not None:
            return cached
    copy_gbps, matmul_tflops = measure(dev, dt, size_bytes=size)
    result = Ceilings(copy_gbps=float(copy_gbps), matmul_tflops=float(matmul_tflops),
                      device_name=str(env["env_device_name"]), dtype=name, fingerprint=fp,
                      measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    text = json.dumps(dataclasses.asdict(result), indent=2) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return result
