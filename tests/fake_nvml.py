"""A stand-in for ``pynvml`` with scripted readings, so the sampler is tested without a GPU.

``FakeNvml`` is a module object carrying the functions and constants ``attnbench.harness.measure.telemetry`` and
``attnbench.harness.measure.env`` use, under pynvml's names and with its values (a test checks they agree). Each
reading is a function of how many times that query has been answered, so a test can compute the
expected mean or peak from ``nvml_samples``: the sampler makes every query once per sample.
"""

from __future__ import annotations

import threading
import time
import types
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass

# Values from nvml.h, as pynvml defines them.
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_UNKNOWN = 999

CONSTANTS: dict[str, int] = {
    "NVML_CLOCK_SM": 1,
    "NVML_CLOCK_MEM": 2,
    "NVML_TEMPERATURE_GPU": 0,
    "NVML_ERROR_UNINITIALIZED": NVML_ERROR_UNINITIALIZED,
    "NVML_ERROR_INVALID_ARGUMENT": NVML_ERROR_INVALID_ARGUMENT,
    "NVML_ERROR_NOT_SUPPORTED": NVML_ERROR_NOT_SUPPORTED,
    "NVML_ERROR_LIBRARY_NOT_FOUND": NVML_ERROR_LIBRARY_NOT_FOUND,
    "NVML_ERROR_FUNCTION_NOT_FOUND": NVML_ERROR_FUNCTION_NOT_FOUND,
    "NVML_ERROR_UNKNOWN": NVML_ERROR_UNKNOWN,
    "nvmlClocksEventReasonGpuIdle": 0x1,
    "nvmlClocksEventReasonApplicationsClocksSetting": 0x2,
    "nvmlClocksEventReasonUserDefinedClocks": 0x2,
    "nvmlClocksEventReasonSwPowerCap": 0x4,
    "nvmlClocksEventReasonHwSlowdown": 0x8,
    "nvmlClocksEventReasonSyncBoost": 0x10,
    "nvmlClocksEventReasonSwThermalSlowdown": 0x20,
    "nvmlClocksEventReasonHwThermalSlowdown": 0x40,
    "nvmlClocksEventReasonHwPowerBrakeSlowdown": 0x80,
    "nvmlClocksEventReasonDisplayClockSetting": 0x100,
    "nvmlClocksThrottleReasonGpuIdle": 0x1,
    "nvmlClocksThrottleReasonApplicationsClocksSetting": 0x2,
    "nvmlClocksThrottleReasonSwPowerCap": 0x4,
    "nvmlClocksThrottleReasonHwSlowdown": 0x8,
    "nvmlClocksThrottleReasonBoardLimit": 0x200,
    "nvmlClocksThrottleReasonReliability": 0x400,
}

_MESSAGES = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_FUNCTION_NOT_FOUND: "Function Not Found",
    NVML_ERROR_UNKNOWN: "Unknown Error",
}


class NVMLError(Exception):
    """Like ``pynvml.NVMLError``: carries the NVML return code in ``value``."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return _MESSAGES.get(self.value, f"NVML Error with code {self.value}")


@dataclass(frozen=True)
class Utilization:
    gpu: int
    memory: int


@dataclass(frozen=True)
class Memory:
    total: int
    used: int
    free: int


GIB = 1 << 30
MIB = 1 << 20


def _default_reasons(i: int) -> int:
    # Idle for the first three polls, then a software power cap appears mid-window.
    return 0x1 if i < 3 else 0x1 | 0x4


@dataclass(frozen=True)
class Script:
    """Reading number ``i`` (0-based, counted per query) of each quantity."""

    gpu_util_pct: Callable[[int], int] = lambda i: 90
    mem_util_pct: Callable[[int], int] = lambda i: 40
    mem_used_bytes: Callable[[int], int] = lambda i: GIB + i * MIB
    power_mw: Callable[[int], int] = lambda i: 200_000 + 1_000 * i  # a ramp: 200 W, 201 W, ...
    sm_clock_mhz: Callable[[int], int] = lambda i: 1980 if i % 2 == 0 else 1755
    mem_clock_mhz: Callable[[int], int] = lambda i: 2619
    temp_c: Callable[[int], int] = lambda i: 60 + i
    energy_mj: Callable[[int], int] = lambda i: 5_000_000 + 12_345 * i  # +12.345 J per read
    reasons: Callable[[int], int] = _default_reasons


@dataclass(frozen=True)
class Handle:
    index: int


class FakeNvml(types.ModuleType):
    """A fake ``pynvml``. ``unsupported`` functions raise NOT_SUPPORTED, ``not_found`` ones raise
    FUNCTION_NOT_FOUND (an old driver), ``missing`` ones are absent (an old pynvml); ``init_error``
    makes ``nvmlInit`` fail with that code."""

    def __init__(self, script: Script = Script(), *, unsupported: Collection[str] = (),
                 not_found: Collection[str] = (), missing: Collection[str] = (),
                 init_error: int | None = None, device_count: int = 1,
                 driver_version: str = "550.54.15") -> None:
        super().__init__("fake_nvml")
        self.script = script
        self.calls: Counter[str] = Counter()
        self.refcount = 0
        self.inits = 0
        self._lock = threading.Lock()
        self.NVMLError = NVMLError
        for name, value in CONSTANTS.items():
            setattr(self, name, value)

        def query(name: str, fn: Callable[..., object]) -> Callable[..., object]:
            def wrapped(*args: object) -> object:
                if self.refcount <= 0:
                    raise NVMLError(NVML_ERROR_UNINITIALIZED)
                if name in unsupported:
                    raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
                if name in not_found:
                    raise NVMLError(NVML_ERROR_FUNCTION_NOT_FOUND)
                key = name if name != "nvmlDeviceGetClockInfo" else f"{name}:{args[1]}"
                with self._lock:
                    i = self.calls[key]
                    self.calls[key] += 1
                return fn(i, *args)
            return wrapped

        def init() -> None:
            if init_error is not None:
                raise NVMLError(init_error)
            self.refcount += 1
            self.inits += 1

        def shutdown() -> None:
            if self.refcount <= 0:
                raise NVMLError(NVML_ERROR_UNINITIALIZED)
            self.refcount -= 1

        def handle_by_index(i: int, index: int) -> Handle:
            if not 0 <= index < device_count:
                raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
            return Handle(index)

        def handle_by_uuid(i: int, uuid: str) -> Handle:
            if not uuid.startswith("GPU-"):
                raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
            return Handle(0)

        def clock(i: int, h: Handle, kind: int) -> int:
            return script.sm_clock_mhz(i) if kind == CONSTANTS["NVML_CLOCK_SM"] else script.mem_clock_mhz(i)

        def memory(i: int, h: Handle) -> Memory:
            used = script.mem_used_bytes(i)
            return Memory(total=80 * GIB, used=used, free=80 * GIB - used)

        functions: dict[str, Callable[..., object]] = {
            "nvmlDeviceGetHandleByIndex": handle_by_index,
            "nvmlDeviceGetHandleByUUID": handle_by_uuid,
            "nvmlDeviceGetIndex": lambda i, h: h.index,
            "nvmlSystemGetDriverVersion": lambda i: driver_version,
            "nvmlDeviceGetTotalEnergyConsumption": lambda i, h: script.energy_mj(i),
            "nvmlDeviceGetUtilizationRates": lambda i, h: Utilization(script.gpu_util_pct(i), script.mem_util_pct(i)),
            "nvmlDeviceGetMemoryInfo": memory,
            "nvmlDeviceGetPowerUsage": lambda i, h: script.power_mw(i),
            "nvmlDeviceGetClockInfo": clock,
            "nvmlDeviceGetTemperature": lambda i, h, sensor: script.temp_c(i),
            "nvmlDeviceGetCurrentClocksEventReasons": lambda i, h: script.reasons(i),
            "nvmlDeviceGetCurrentClocksThrottleReasons": lambda i, h: script.reasons(i),
        }
        self.nvmlInit = init
        self.nvmlShutdown = shutdown
        for name, fn in functions.items():
            if name not in missing:
                setattr(self, name, query(name, fn))

    def wait_for(self, name: str, count: int, *, timeout_s: float = 2.0) -> None:
        """Block until ``name`` has been answered ``count`` times (the sampler runs in a thread)."""
        deadline = time.monotonic() + timeout_s
        while self.calls[name] < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} answered {self.calls[name]} times, waited for {count}")
            time.sleep(0.001)
