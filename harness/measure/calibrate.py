"""Measured ceilings of a device: achieved copy and read bandwidth and dense matmul rate, once per device.

A roofline drawn from datasheet peaks flatters no one: boost clocks, power caps, ECC and the
memory system of the actual machine decide what is reachable. ``ceilings(device, dtype, ...)``
measures both roofs on the device itself and caches them as JSON under ``cache_dir``, keyed by the
environment fingerprint (``attnbench.harness.measure.env``) of the device and the calibration's own settings, so a
driver or torch upgrade or another machine measures again, and everything else reads the file.

- Copy bandwidth: ``dst.copy_(src)`` over ``size_bytes`` moves ``2 * size_bytes`` (one read, one
  write); the buffer is sized well past the last-level cache (1 GiB on CUDA, capped at an eighth of
  the device; 256 MiB on CPU, which CPUs with very large L3 caches may still partly hold).
- Matmul rate: a square ``n x n`` matmul is ``2 n^3`` FLOPs. CUDA uses n = 8192, large enough to
  reach the tensor-core plateau; on CPU n grows (256 ... 2048) until one call takes ~50 ms.
- Read bandwidth: the faster of two read-only streams over the same buffer, row maxima and a
  matrix-vector product (each reads ``size_bytes`` and writes one element per row). Which one a CPU
  runs faster differs by machine (2-core AMD EPYC, one thread, 64 MiB: row maxima 8.8-10.9 GB/s,
  BLAS gemv 12.1-15.4, copy 11.2); a read roof below what a gemv reaches would be no roof. Decode
  reads far more than it writes (the cache, the weights), so a read stream is its roof; it can
  legitimately beat the copy rate (whose writes cost a read-for-ownership on CPUs), or fall below it
  when the copy uses non-temporal stores (one AMD EPYC core, 64 MiB: copy 45.5-46.3 GB/s, read
  41.3-42.7). The memory roof is the faster of the two.
- Each rate is the best of several repetitions (noise on a shared machine only ever adds time),
  taken in rounds (copy, read, matmul in turn, so they are compared under the same conditions)
  until no rate's best improves by more than ``STABLE_REL`` in a round; CUDA is timed with
  events (no host overhead in the interval), CPU with ``perf_counter``. Repetitions repeat the call
  enough times to last ~20 ms so that short calls are not lost in timer resolution or launch gaps.

A ceiling measured on a busy machine is too low and, cached, would stay wrong for every later run.
The rule: **only a quiet calibration is cached**. Quiet means every rate was stable (its best-of-k
stopped improving) and, on CPU, other processes used at most ``BUSY_SHARE`` of this process's CPUs while
it measured (``/proc/stat`` for the CPUs in our affinity mask, minus our own CPU time). A busy
calibration is used for the current run only (``Ceilings.quiet`` is False and a warning is logged),
so the next run measures again; a quiet re-measurement (``force``, e.g. when a row exceeds its
ceiling) replaces the cached file. Calibrations of one device never run at the same time: a
``flock`` on a lock file in ``cache_dir`` (opened with ``O_NOFOLLOW``) serializes parallel workers,
and a worker that waited reads what the first one cached.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from attnbench.harness.errors import UserError
from attnbench.harness.files import atomic_write
from attnbench.harness.measure.cpuload import others_share
from attnbench.harness.measure.env import environment, fingerprint

CPU_COPY_BYTES = 256 << 20
CUDA_COPY_BYTES = 1 << 30
CUDA_MATMUL_N = 8192
CPU_MATMUL_SIZES = (256, 512, 1024, 1536, 2048)
CPU_MATMUL_TARGET_S = 0.05  # one CPU matmul lasts at least this long, up to the largest size
REP_TARGET_S = 0.02  # each timed repetition lasts at least about this long
REPS = {"cpu": 5, "cuda": 10}
MAX_INNER = 10_000
STABLE_REL = 0.03  # a round that beats the best so far by no more than 3%: stopped improving
MAX_ROUNDS = 6  # rounds per rate before giving up on stability (the result is then not cached)
READ_ROW = 1 << 16  # elements per row of the read stream
BUSY_SHARE = 0.10  # others may use at most this share of our CPUs while we calibrate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ceilings:
    copy_gbps: float  # achieved, counting read + write bytes, 1e9 B/s
    read_gbps: float  # achieved read stream (a sum over the buffer), 1e9 B/s
    matmul_tflops: float  # achieved dense matmul rate, 1e12 FLOP/s
    device_name: str
    dtype: str  # torch dtype name without "torch.", e.g. "bfloat16"
    fingerprint: str  # harness.measure.env.fingerprint of the device and this calibration's settings
    measured_at: str  # ISO 8601, UTC
    quiet: bool = True  # measured stable on an otherwise idle machine; only quiet ceilings are cached
    others_cpu_share: float | None = None  # share of our CPUs other processes used meanwhile (None: unknown)

    def __post_init__(self) -> None:
        for name in ("copy_gbps", "read_gbps", "matmul_tflops"):
            value = getattr(self, name)
            if not (isinstance(value, float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name}={value!r} must be a positive finite float")

    @property
    def bandwidth_gbps(self) -> float:
        """The memory roof: the fastest stream the device sustains. A roofline bound and a bandwidth
        fraction must use it (decode is almost all reads); with the copy rate, read-heavy rows would
        sit "above the ceiling" on a correct calibration."""
        return max(self.read_gbps, self.copy_gbps)

    def columns(self) -> dict[str, object]:
        """The ceiling columns every row of a calibrated run carries (the one place they are named)."""
        return {"ceiling_copy_gbps": self.copy_gbps, "ceiling_read_gbps": self.read_gbps,
                "ceiling_matmul_tflops": self.matmul_tflops, "ceiling_quiet": self.quiet,
                "ceiling_measured_at": self.measured_at}


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
            # device N's stream, not the current device's: with device=cuda:1 and current device 0,
            # bare Event.record() would time an idle stream (issue 15, item 9).
            with torch.cuda.device(device):
                stream = torch.cuda.current_stream(device)
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record(stream)
                for _ in range(inner):
                    fn()
                end.record(stream)
                end.synchronize()
            return start.elapsed_time(end) / 1e3  # elapsed_time is in ms
        return cuda_time

    def cpu_time(fn: Callable[[], object], inner: int) -> float:
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        return time.perf_counter() - t0
    return cpu_time


def best_call_s(fn: Callable[[], object], device: torch.device, *, reps: int | None = None) -> float:
    """Fastest seconds per call of ``fn`` after warm-up, over repetitions of ~``REP_TARGET_S`` each."""
    clock = _clock(device)
    clock(fn, 1)  # warm-up: allocator, kernel selection, cuBLAS handle, page faults
    one_s = clock(fn, 1)
    inner = max(1, min(MAX_INNER, math.ceil(REP_TARGET_S / max(one_s, 1e-9))))
    return min(clock(fn, inner) / inner for _ in range(reps or REPS.get(device.type, 5)))


def stable_rates(streams: dict[str, tuple[Callable[[], object], float]], device: torch.device
                 ) -> tuple[dict[str, float], bool]:
    """Best ``work`` per second of each ``name: (fn, work)``, and whether they all reached a plateau.

    Each round takes the best-of-k of every stream in turn, so streams are compared under the same
    conditions (a load that comes and goes hits all of them); rounds go on until no stream's last
    round beats its earlier best by more than ``STABLE_REL`` (at most ``MAX_ROUNDS``): the best-of-k
    has stopped improving. A slow round (a burst of load) does not restart the count; whether the
    machine was busy throughout is the load probe's question, not this one's."""
    rates: dict[str, list[float]] = {name: [] for name in streams}
    for _ in range(MAX_ROUNDS):
        for name, (fn, work) in streams.items():
            rates[name].append(work / best_call_s(fn, device))
        if all(len(r) >= 2 and r[-1] <= (1 + STABLE_REL) * max(r[:-1]) for r in rates.values()):
            return {name: max(r) for name, r in rates.items()}, True
    return {name: max(r) for name, r in rates.items()}, False


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


@dataclass(frozen=True)
class Measurement:
    copy_gbps: float
    read_gbps: float
    matmul_tflops: float
    stable: bool  # every rate reached a plateau (its best-of-k stopped improving)
    others_cpu_share: float | None  # share of our CPUs others used while measuring; None: unknown


def measure(device: torch.device, dtype: torch.dtype, *, size_bytes: int) -> Measurement:
    """Measured copy GB/s (read + write), read GB/s and matmul TFLOP/s for ``dtype`` on ``device``."""
    with others_share() as load:
        numel = max(1, size_bytes // dtype.itemsize)
        src = torch.zeros(numel, dtype=dtype, device=device)  # zeros, not empty: pages are touched now
        dst = torch.empty_like(src)
        # Row maxima over rows of READ_ROW elements: each row a contiguous stream, the rows split across
        # threads. A max, not a sum: on a 2-core CPU float sums ran 10-15% below a copy's rate (add
        # latency, cascade summation), max kept up with memory (measured: max 21.8, sum 18.7, copy
        # 20.4 GB/s on one thread).
        width = min(numel, READ_ROW)
        rows_RW = src[:numel // width * width].view(-1, width)
        max_R = torch.empty(rows_RW.shape[0], dtype=dtype, device=device)
        ones_W = torch.ones(width, dtype=dtype, device=device)
        dot_R = torch.empty_like(max_R)
        n = matmul_n(device, dtype)
        a, b = _random(n, dtype, device), _random(n, dtype, device)
        out = torch.empty(n, n, dtype=dtype, device=device)
        rates, stable = stable_rates({
            "copy": (lambda: dst.copy_(src), 2 * numel * dtype.itemsize),
            "read": (lambda: torch.amax(rows_RW, dim=1, out=max_R), rows_RW.numel() * dtype.itemsize),
            "read_gemv": (lambda: torch.mv(rows_RW, ones_W, out=dot_R), rows_RW.numel() * dtype.itemsize),
            "matmul": (lambda: torch.mm(a, b, out=out), 2 * n**3)}, device)
    read = max(rates["read"], rates["read_gemv"])
    return Measurement(rates["copy"] / 1e9, read / 1e9, rates["matmul"] / 1e12, stable,
                       load.value if device.type == "cpu" else None)


def _settings(device: torch.device, dtype: torch.dtype, size_bytes: int) -> dict[str, object]:
    settings: dict[str, object] = {"calibration": "copy+read(max,gemv)+matmul/3", "dtype": _dtype_name(dtype),
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


def last_level_cache_bytes(device: torch.device | str) -> int:
    """The device's largest cache (CPU: the highest-level cache in sysfs; CUDA: L2); 0 if unknown.
    A row whose working set fits in it may stream faster than memory: above the ceiling, rightly."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return int(torch.cuda.get_device_properties(dev).L2_cache_size)
    best_level, best = -1, 0
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            level = int((index / "level").read_text())
            size = (index / "size").read_text().strip()
        except (OSError, ValueError):
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:], 1)
        digits = size.rstrip("KMG")
        if digits.isdigit() and level > best_level:
            best_level, best = level, int(digits) * scale
    return best


def cache_dir_of(value: str) -> Path:
    """``calibration_dir`` as a folder. ``~`` needs a home: with ``HOME`` empty (a service, a bare
    container) the default falls back to ``$XDG_CACHE_HOME/attnbench``, never to ``/.cache``."""
    if not value.strip():
        raise UserError("calibration_dir='' is empty; give a folder for the calibration cache")
    if value.startswith("~"):
        if os.environ.get("HOME", "").strip():
            return Path(value).expanduser()
        xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
        if xdg and value.rstrip("/") in ("~/.cache/attnbench", "~/.cache"):
            return Path(xdg) / "attnbench"
        raise UserError(f"calibration_dir={value!r} needs a home folder, but HOME is empty; set HOME or "
                        f"XDG_CACHE_HOME, or give calibration_dir=<a folder>")
    return Path(value)


@contextlib.contextmanager
def calibration_lock(cache_dir: Path, device: torch.device) -> Iterator[None]:
    """Hold ``cache_dir/calibrate-<device>.lock`` exclusively: one calibration of a device at a time
    (two on one CPU measure each other). ``O_NOFOLLOW``: a planted symlink is refused, not followed."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    name = "cpu" if device.type == "cpu" else f"cuda{device.index if device.index is not None else 0}"
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(cache_dir / f"calibrate-{name}.lock", flags, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released on close, also if this process dies
        yield
    finally:
        os.close(fd)


def ceilings(device: torch.device | str, dtype: torch.dtype | str, *, cache_dir: Path,
             force: bool = False, size_bytes: int | None = None) -> Ceilings:
    """Copy, read and matmul ceilings of ``device`` for ``dtype``: read from ``cache_dir`` if measured
    quietly before on this fingerprint, else measured now (or whenever ``force``), and cached if quiet.

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
    cache_dir = Path(cache_dir).expanduser()
    path = cache_dir / f"ceilings-{name}-{fp}.json"
    with calibration_lock(cache_dir, dev):
        if not force:
            cached = _read(path, fp=fp, dtype=name)
            if cached is not None:
                return cached
        m = measure(dev, dt, size_bytes=size)
        quiet = m.stable and (m.others_cpu_share is None or m.others_cpu_share <= BUSY_SHARE)
        result = Ceilings(copy_gbps=float(m.copy_gbps), read_gbps=float(m.read_gbps),
                          matmul_tflops=float(m.matmul_tflops), device_name=str(env["env_device_name"]),
                          dtype=name, fingerprint=fp,
                          measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                          quiet=quiet, others_cpu_share=m.others_cpu_share)
        if quiet:
            text = json.dumps(dataclasses.asdict(result), indent=2) + "\n"
            atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        else:
            share = "unknown" if m.others_cpu_share is None else f"{m.others_cpu_share:.0%}"
            log.warning("calibration of %s (%s) not cached: %s (other processes used %s of this process's "
                        "CPUs, at most %.0f%% allowed); this run uses it, the next one measures again",
                        dev, name, "stable" if m.stable else "rates still changing between rounds", share,
                        100 * BUSY_SHARE)
        return result
