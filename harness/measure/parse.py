"""What a user types for a case, as the typed value a case holds: sizes (``32k``), the device
(``auto``), the dtype and the timing mode. Called where a configuration is read, once
(``attnbench.harness.sweep.plan.job_spec``, ``attnbench.harness.measure.bench``); every bad value raises a one-line
``UserError`` or ``ValueError`` naming it and what is allowed.
"""

from __future__ import annotations

import re
from typing import Literal

import torch

from attnbench.harness.errors import UserError
from attnbench.harness.text.units import format_size  # noqa: F401 - re-exported: sizes are parsed here, printed there

Timing = Literal["cpu_wall", "cuda_events", "cuda_events_per_call", "cuda_graph"]
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                                  "float16": torch.float16, "float64": torch.float64}
_SIZE = re.compile(r"^\s*(\d+)\s*([kKmM]?)\s*$")
# The largest size a key takes: torch indexes a tensor dimension with int32 in many kernels, and a
# row's derived int64 columns (bytes, flops: products of several sizes) must still fit.
MAX_SIZE = 2**31 - 1


def parse_size(name: str, value: object) -> int:
    """``32k`` -> 32768, ``1M`` -> 1048576, ``4096`` -> 4096; positive integers up to ``MAX_SIZE``
    only (``UserError`` otherwise)."""
    if isinstance(value, bool):
        raise UserError(f"{name}={value!r} is not a size; use a positive integer or a k/M suffix like 32k")
    if isinstance(value, int):
        number = value
    else:
        match = _SIZE.match(str(value))
        if not match:
            raise UserError(f"{name}={value!r} is not a size; use a positive integer or a k/M suffix like 32k")
        number = int(match.group(1)) * {"": 1, "k": 1024, "m": 1024 ** 2}[match.group(2).lower()]
    if number <= 0:
        raise UserError(f"{name}={value!r} is not allowed: {name} must be a positive integer")
    if number > MAX_SIZE:
        raise UserError(f"{name}={value!r} is too large: at most {MAX_SIZE} ({format_size(MAX_SIZE)}, 2^31-1)")
    return number


_DEVICE = re.compile(r"auto|cpu|cuda(:\d{1,4})?")
DEVICE_CHOICES = "auto, cpu, cuda, cuda:<index>"


def check_device_name(value: str) -> str:
    """``value`` if it names a device attnbench measures on (``cpu:1`` is not one: a CPU is one device)."""
    if not _DEVICE.fullmatch(value):
        raise UserError(f"device={value!r} is not one of: {DEVICE_CHOICES}")
    return value


def resolve_device(value: str) -> torch.device:
    check_device_name(value)
    if value == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        from attnbench.harness.measure.probes import cuda_unusable_reason, nvml_gpu_count

        # NVML sees GPUs that torch cannot use: measuring the CPU instead would be a silent fallback.
        seen = nvml_gpu_count()
        if seen:
            raise ValueError(f"device=auto: NVML sees {seen} GPU(s) but torch cannot use CUDA "
                             f"({cuda_unusable_reason()}); fix the driver or torch build, or pass device=cpu")
        return torch.device("cpu")
    try:
        device = torch.device(value)
    except RuntimeError:
        raise ValueError(f"device={value!r} is not one of: auto, cpu, cuda, cuda:<index>") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device={value!r} is not one of: auto, cpu, cuda, cuda:<index>")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={value!r} was asked for but CUDA is not available here; valid: auto, cpu")
    return device


def resolve_dtype(value: str, device: torch.device) -> torch.dtype:
    if value == "auto":
        # bf16 is what GPUs serve in; CPUs run it through slow paths, so float32 there.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if value not in DTYPES:
        raise ValueError(f"dtype={value!r} is not one of: auto, {', '.join(DTYPES)}")
    return DTYPES[value]


def timing_mode(device: torch.device, *, cuda_graph: bool, cuda_timing: str = "held") -> Timing:
    """How a case on ``device`` is timed: a CPU has one clock; on CUDA, events around held batches of
    plain calls (the default), of graph replays, or around single synchronised calls (``per_call``)."""
    if device.type == "cpu":
        return "cpu_wall"
    if cuda_timing not in ("held", "per_call"):
        raise ValueError(f"measure.cuda_timing={cuda_timing!r} is not one of: held, per_call")
    if cuda_graph:
        if cuda_timing == "per_call":
            raise ValueError("measure.cuda_timing=per_call does not apply with measure.cuda_graph=true "
                             "(graph replays are timed held); valid: cuda_timing=held, or cuda_graph=false")
        return "cuda_graph"
    return "cuda_events" if cuda_timing == "held" else "cuda_events_per_call"
