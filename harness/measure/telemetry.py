"""GPU telemetry over a timed window, read from NVML through ``nvidia-ml-py`` (``import pynvml``).

``NvmlSampler`` is a context manager: entering it reads the board's energy counter and starts a
thread that polls utilization, memory, power, clocks, temperature and clock-event (throttle)
reasons; leaving it stops the thread, reads the counter again and takes one last sample, so even a
window shorter than one interval has samples. ``summary(tokens)`` turns the samples into the
columns named in ``EMPTY_COLUMNS``.

``telemetry_for(device)`` is what the harness calls once per run: it returns a sampler factory and
``None``, or a factory of ``NullSampler`` (every column ``None``) and a one-line reason why there is
no telemetry, which the harness prints once.

NVML is initialised lazily: once by ``telemetry_for`` to probe the device, and once per window by
the sampler (``nvmlInit``/``nvmlShutdown`` are reference counted by NVML). Nothing happens at import.

Caveats, from the NVML reference (docs.nvidia.com/deploy/nvml-api, "Device Queries"):
- ``nvmlDeviceGetTotalEnergyConsumption`` is a millijoule counter that many boards update only about
  every 100 ms, so energy over windows under ~1 s is coarse; measure windows of at least 1 s.
- ``nvmlDeviceGetPowerUsage``: "On Ampere (except GA100) or newer GPUs, the API returns power
  averaged over 1 sec interval"; older boards give the instantaneous draw.
- ``nvmlDeviceGetUtilizationRates``: ``.gpu`` is the percent of the last sample period (1/6 s to 1 s
  by product) in which any kernel ran, not how busy the SMs were; ``.memory`` is the percent of that
  period in which device memory was read or written, not a fraction of peak bandwidth.
- ``nvmlDeviceGetMemoryInfo().used`` is device-wide: it includes other processes and the driver's
  own reservation, so the peak here is an upper bound on what the benchmark itself allocated.
- The polling thread takes the GIL briefly every interval (the NVML calls themselves release it
  through ctypes), which can perturb CPU-bound launch overhead in the window it watches.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType, TracebackType
from typing import Any, Protocol, Self

import torch

from attnbench.harness.results import schema

# The row's telemetry columns, declared in harness/results/schema.py.
EMPTY_COLUMNS: tuple[str, ...] = schema.group("telemetry")

# Clock-event ("throttle") reason bits, in bit order: (suffix of pynvml's nvmlClocksEventReason<X> /
# nvmlClocksThrottleReason<X> constant, name used in nvml_throttle_reasons, counts as throttling).
# GpuIdle (nothing to run) and ApplicationsClocksSetting (clocks pinned by `nvidia-smi -ac`, the
# same bit as UserDefinedClocks) are not throttling. Every other bit, including DisplayClockSetting
# and SyncBoost, caps the clocks below what the workload asked for, so it sets nvml_throttled.
# BoardLimit and Reliability exist only in the older Throttle namespace. A bit not listed here is
# reported as unknown_0x<bit> and also counts: a limit we cannot name should not hide.
_REASONS: tuple[tuple[str, str, bool], ...] = (
    ("GpuIdle", "gpu_idle", False),
    ("ApplicationsClocksSetting", "applications_clocks_setting", False),
    ("SwPowerCap", "sw_power_cap", True),
    ("HwSlowdown", "hw_slowdown", True),
    ("SyncBoost", "sync_boost", True),
    ("SwThermalSlowdown", "sw_thermal_slowdown", True),
    ("HwThermalSlowdown", "hw_thermal_slowdown", True),
    ("HwPowerBrakeSlowdown", "hw_power_brake_slowdown", True),
    ("DisplayClockSetting", "display_clock_setting", True),
    ("BoardLimit", "board_limit", True),
    ("Reliability", "reliability", True),
)


class Sampler(Protocol):
    """A context manager around a timed window whose ``summary`` gives the ``EMPTY_COLUMNS``."""

    def __enter__(self) -> Self: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...

    def summary(self, tokens: int) -> dict[str, object]: ...


@dataclass(frozen=True)
class NvmlSample:
    """One poll; a field is ``None`` where NVML refused that query."""

    gpu_util_pct: int | None
    mem_util_pct: int | None
    mem_used_bytes: int | None
    power_mw: int | None
    sm_clock_mhz: int | None
    mem_clock_mhz: int | None
    temp_c: int | None
    reasons_mask: int | None


def _load_pynvml() -> ModuleType:
    import pynvml  # deferred so that importing the harness never touches NVML

    return pynvml


def _check_tokens(tokens: int) -> None:
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        raise ValueError(f"tokens={tokens!r}: the number of tokens processed in the window must be a positive int")


def _mean(values: Sequence[int | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def _max(values: Sequence[int | None]) -> int | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def reason_names(mask: int, nvml: ModuleType) -> tuple[list[str], bool]:
    """Human names of the bits set in ``mask`` and whether any of them is throttling."""
    names: list[str] = []
    throttled = False
    known = 0
    for suffix, name, throttles in _REASONS:
        bit = getattr(nvml, f"nvmlClocksEventReason{suffix}", None)
        if bit is None:
            bit = getattr(nvml, f"nvmlClocksThrottleReason{suffix}", None)
        if bit is None or bit & known:
            continue
        known |= bit
        if mask & bit:
            names.append(name)
            throttled = throttled or throttles
    unknown = mask & ~known
    for shift in range(unknown.bit_length()):
        if unknown >> shift & 1:
            names.append(f"unknown_0x{1 << shift:x}")
            throttled = True
    return names, throttled


class NvmlSampler:
    """Samples NVML device ``device_index`` every ``interval_s`` between ``__enter__`` and ``__exit__``.

    ``device_index`` is NVML's index, which is not CUDA's where ``CUDA_VISIBLE_DEVICES`` or
    ``CUDA_DEVICE_ORDER`` reorder devices; ``telemetry_for`` maps a torch device to it. ``nvml``
    defaults to ``pynvml``; tests pass a fake with the same names. A sampler is used once.
    """

    def __init__(self, device_index: int, *, interval_s: float = 0.02, nvml: ModuleType | None = None) -> None:
        if device_index < 0:
            raise ValueError(f"device_index={device_index} must be >= 0")
        if not interval_s > 0:
            raise ValueError(f"interval_s={interval_s} must be positive")
        self.device_index = device_index
        self.interval_s = interval_s
        self._nvml = nvml
        self._handle: Any = None
        self._disabled: set[str] = set()  # queries NVML said are unsupported on this device
        self.errors: dict[str, str] = {}  # query -> last NVML error, for diagnosis; not a column
        self.samples: list[NvmlSample] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._thread_error: Exception | None = None
        self._energy_mj: list[int | None] = []
        self._t0 = self._t1 = 0.0
        self._closed = False

    @property
    def nvml(self) -> ModuleType:
        if self._nvml is None:
            self._nvml = _load_pynvml()
        return self._nvml

    # -- one NVML query, tolerant of refusal ------------------------------------------------------
    def _query(self, name: str, fn: Callable[[], Any]) -> Any:
        """``fn()``, or ``None`` where NVML refuses it; an unsupported query is not asked again."""
        if name in self._disabled:
            return None
        nvml = self.nvml
        try:
            return fn()
        except nvml.NVMLError as exc:
            code = getattr(exc, "value", None)
            self.errors[name] = f"{type(exc).__name__}: {exc}"
            if code in (nvml.NVML_ERROR_NOT_SUPPORTED, nvml.NVML_ERROR_FUNCTION_NOT_FOUND):
                self._disabled.add(name)  # won't change within the window; stop asking
            return None

    def _reasons(self) -> int:
        nvml, h = self.nvml, self._handle
        # NVML renamed ...ThrottleReasons (now deprecated) to ...EventReasons around the R535 drivers;
        # the R525 reference has only the old name, and pynvml raises FUNCTION_NOT_FOUND for a
        # symbol the installed driver lacks.
        events = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
        if events is not None and "reasons_events" not in self._disabled:
            try:
                return events(h)
            except nvml.NVMLError as exc:
                if getattr(exc, "value", None) != nvml.NVML_ERROR_FUNCTION_NOT_FOUND:
                    raise
                self._disabled.add("reasons_events")
        return nvml.nvmlDeviceGetCurrentClocksThrottleReasons(h)

    def _energy(self) -> int | None:
        return self._query("energy", lambda: self.nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))

    def _sample(self) -> NvmlSample:
        nvml, h = self.nvml, self._handle
        util = self._query("util", lambda: nvml.nvmlDeviceGetUtilizationRates(h))
        mem = self._query("mem", lambda: nvml.nvmlDeviceGetMemoryInfo(h))
        return NvmlSample(
            gpu_util_pct=None if util is None else int(util.gpu),
            mem_util_pct=None if util is None else int(util.memory),
            mem_used_bytes=None if mem is None else int(mem.used),
            power_mw=self._query("power", lambda: nvml.nvmlDeviceGetPowerUsage(h)),
            sm_clock_mhz=self._query("sm_clock", lambda: nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM)),
            mem_clock_mhz=self._query("mem_clock", lambda: nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_MEM)),
            temp_c=self._query("temp", lambda: nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU)),
            reasons_mask=self._query("reasons", self._reasons),
        )

    def _run(self) -> None:
        try:
            while True:
                self.samples.append(self._sample())
                if self._stop.wait(self.interval_s):
                    return
        except Exception as exc:  # anything but NVMLError is a bug: re-raised by __exit__, not lost with the thread
            self._thread_error = exc

    # -- the window -------------------------------------------------------------------------------
    def __enter__(self) -> Self:
        assert self._thread is None and not self._closed, "an NvmlSampler measures one window; make a new one"
        nvml = self.nvml
        nvml.nvmlInit()
        try:
            self._handle = nvml.nvmlDeviceGetHandleByIndex(self.device_index)
        except BaseException:
            nvml.nvmlShutdown()
            raise
        self._energy_mj.append(self._energy())
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name=f"nvml-sampler-{self.device_index}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        assert self._thread is not None, "__exit__ without __enter__"
        try:
            self._stop.set()
            self._thread.join()
            if self._thread_error is None:
                self._energy_mj.append(self._energy())
                self._t1 = time.perf_counter()
                self.samples.append(self._sample())
        finally:
            self._closed = True
            self.nvml.nvmlShutdown()
        if self._thread_error is not None and exc is None:  # an error in the with-block is the one to see
            raise RuntimeError("the NVML sampling thread failed") from self._thread_error

    def summary(self, tokens: int) -> dict[str, object]:
        """The ``EMPTY_COLUMNS`` for the closed window; ``tokens`` is how many it processed."""
        _check_tokens(tokens)
        assert self._closed, "summary() is read after the with-block has closed the window"
        s = self.samples
        window_s = self._t1 - self._t0
        power_mean_w = _mean([x.power_mw for x in s])
        power_mean_w = None if power_mean_w is None else power_mean_w / 1e3
        energy_j, source = self._energy_j(window_s, power_mean_w)
        seen = 0
        any_reasons = False
        for x in s:
            if x.reasons_mask is not None:
                seen |= x.reasons_mask
                any_reasons = True
        names, throttled = reason_names(seen, self.nvml)
        row: dict[str, object] = {
            "nvml_samples": len(s),
            "nvml_window_s": window_s,
            "nvml_gpu_util_pct": _mean([x.gpu_util_pct for x in s]),
            "nvml_mem_util_pct": _mean([x.mem_util_pct for x in s]),
            "nvml_mem_used_peak_bytes": _max([x.mem_used_bytes for x in s]),
            "nvml_power_mean_w": power_mean_w,
            "nvml_energy_j": energy_j,
            "nvml_energy_source": source,
            "nvml_energy_per_token_j": None if energy_j is None else energy_j / tokens,
            "nvml_sm_clock_mhz": _mean([x.sm_clock_mhz for x in s]),
            "nvml_mem_clock_mhz": _mean([x.mem_clock_mhz for x in s]),
            "nvml_temp_max_c": _max([x.temp_c for x in s]),
            "nvml_throttled": throttled if any_reasons else None,
            "nvml_throttle_reasons": ",".join(names) if any_reasons else None,
        }
        assert tuple(row) == EMPTY_COLUMNS
        return row

    def _energy_j(self, window_s: float, power_mean_w: float | None) -> tuple[float | None, str | None]:
        start, end = self._energy_mj
        # A zero difference means the counter did not tick inside a short window (it updates about
        # every 100 ms), and a negative one that it was reset; neither measures this window.
        if start is not None and end is not None and end > start:
            return (end - start) / 1e3, "counter"
        if power_mean_w is not None:
            return power_mean_w * window_s, "power_integral"
        return None, None


class NullSampler:
    """Stands in where there is no telemetry: the same columns, all ``None``; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None

    def summary(self, tokens: int) -> dict[str, object]:
        _check_tokens(tokens)
        return dict.fromkeys(EMPTY_COLUMNS)


def _null(reason: str) -> tuple[Callable[[], Sampler], str]:
    return (lambda: NullSampler(reason)), reason


def _uuid_of(cuda_index: int) -> str | None:
    """CUDA's UUID of a device, formatted as NVML prints it without the GPU-/MIG- prefix."""
    import uuid

    raw = getattr(torch.cuda.get_device_properties(cuda_index), "uuid", None)
    if raw is None:
        return None
    data = getattr(raw, "bytes", None)
    return str(uuid.UUID(bytes=bytes(data))) if data is not None else str(raw)


def _nvml_index(cuda_index: int, nvml: ModuleType) -> int:
    """NVML's index of CUDA device ``cuda_index``, matched by UUID (indices differ under
    ``CUDA_VISIBLE_DEVICES`` and CUDA's default fastest-first order). Without CUDA (tests with a
    fake NVML) the index is taken as is."""
    if not torch.cuda.is_available():
        return cuda_index
    uid = _uuid_of(cuda_index)
    if uid is None:
        raise LookupError("this torch build does not expose device UUIDs")
    last: Exception | None = None
    for prefix in ("GPU-", "MIG-"):
        try:
            return int(nvml.nvmlDeviceGetIndex(nvml.nvmlDeviceGetHandleByUUID(prefix + uid)))
        except nvml.NVMLError as exc:
            last = exc
    raise LookupError(f"NVML knows no device with UUID {uid}: {last}")


def telemetry_for(device: torch.device | str, *, nvml: ModuleType | None = None,
                  interval_s: float = 0.02) -> tuple[Callable[[], Sampler], str | None]:
    """A factory of samplers for ``device`` and ``None``, or a factory of ``NullSampler`` and why.

    Probes NVML once (init, find the device, shut down); never raises for a missing or broken NVML,
    only (``ValueError``) for a CUDA index beyond the devices torch sees.
    """
    dev = torch.device(device)
    if dev.type != "cuda":
        return _null(f"device is {dev.type}" + ("" if dev.type == "cpu" else "; NVML covers NVIDIA GPUs only"))
    cuda_index = dev.index if dev.index is not None else (
        torch.cuda.current_device() if torch.cuda.is_available() else 0)
    if torch.cuda.is_available() and not cuda_index < torch.cuda.device_count():
        raise ValueError(f"device {dev}: there are {torch.cuda.device_count()} CUDA devices")
    if nvml is None:
        try:
            nvml = _load_pynvml()
        except ImportError as exc:
            return _null(f"no NVML on this machine: pynvml is not installed ({exc})")
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        if getattr(exc, "value", None) == nvml.NVML_ERROR_LIBRARY_NOT_FOUND:
            return _null(f"no NVML on this machine: {exc}")
        return _null(f"pynvml could not initialise: {exc}")
    try:
        index = _nvml_index(cuda_index, nvml)
        nvml.nvmlDeviceGetHandleByIndex(index)
    except (nvml.NVMLError, LookupError) as exc:
        return _null(f"NVML cannot find CUDA device {cuda_index}: {exc}")
    finally:
        nvml.nvmlShutdown()
    return (lambda: NvmlSampler(index, interval_s=interval_s, nvml=nvml)), None
