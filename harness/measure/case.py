"""A case: one thing to measure. A job (one Hydra config) expands into several.

The sizes users type (``seq=32k``) are parsed here; every user-facing check raises a one-line
``ValueError`` naming the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
import torch

from harness.errors import UserError
from harness.results import schema
from variants.registry import family_shape
from variants.shape import ModelShape

Phase = Literal["prefill", "decode"]
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


def format_size(n: int) -> str:
    for unit, scale in (("M", 1024 ** 2), ("k", 1024)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


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
        from harness.measure.probes import cuda_unusable_reason, nvml_gpu_count

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


def case_label(row: Mapping[str, Any]) -> str:
    """The case as a person reads it, from its columns (a result row or ``Case.columns()``): the one
    label of progress lines, plans, merges and the nightly history."""
    def value(key: str) -> Any:
        v = row.get(key)
        return None if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else v

    compile_mode = value("compile")
    comp = f"+compile:{compile_mode}" if compile_mode not in (None, "none") else ""
    decode_len = value("decode_len")
    steps = f" L={int(decode_len)}" if value("phase") == "decode" and decode_len not in (None, 1) else ""
    seq_lens, page_size = value("seq_lens"), value("page_size")
    ragged = f" seq_lens={','.join(format_size(int(n)) for n in str(seq_lens).split(','))}" if seq_lens else ""
    paged = f" page_size={int(page_size)}" if page_size is not None else ""
    seq = value("seq")
    seq_text = format_size(int(seq)) if seq is not None else "?"
    batch = value("batch")
    # Plain timing (cpu_wall, cuda_events) is the default and goes unsaid; a graph, per-call timing or a
    # flushed L2 is said.
    timed = f" {value('timing')}" if value("timing") in ("cuda_graph", "cuda_events_per_call") else ""
    flush = " l2_flush" if value("l2_flush") is True or value("l2_flush") == 1 else ""
    return (f"{value('variant')}/{value('impl')}{comp} {value('phase')}{steps} seq={seq_text}{ragged}{paged} "
            f"batch={batch if batch is None else int(batch)} {value('dtype')}{timed}{flush}")


@dataclass(frozen=True)
class Case:
    variant: str
    impl: str
    compile: str | None  # torch.compile mode, None for none
    phase: Phase
    model: str  # preset name the shape came from
    shape: ModelShape
    batch: int
    seq: int  # decode: tokens already cached; prefill: prompt length
    decode_len: int  # new tokens per decode step
    dtype: str
    device: str  # "cpu" or "cuda:0"
    attention: str = "self"
    timing: Timing = "cpu_wall"  # part of the identity: a graph replay and plain calls time different things
    l2_flush: bool = False  # CUDA only: flush L2 before each timed step
    # A ragged decode batch: tokens cached per sequence (``seq`` is then the longest); None: all hold seq.
    seq_lens: tuple[int, ...] | None = None
    page_size: int | None = None  # a paged cache of this many positions per page; None: contiguous

    def __post_init__(self) -> None:
        if self.seq_lens is not None:
            if len(self.seq_lens) != self.batch:
                raise ValueError(f"seq_lens has {len(self.seq_lens)} lengths for batch={self.batch}; "
                                 f"give one per sequence")
            if self.phase != "decode" or self.attention != "self":
                raise ValueError("seq_lens (a ragged batch) applies to self-attention decode only")
            assert max(self.seq_lens) == self.seq, "seq is the longest sequence of a ragged batch"
        on_cpu = torch.device(self.device).type == "cpu"
        if self.timing not in schema.TIMING_MODES or on_cpu != (self.timing == "cpu_wall"):
            raise ValueError(f"timing={self.timing!r} does not apply to device={self.device!r}; valid: "
                             f"{'cpu_wall' if on_cpu else 'cuda_events, cuda_events_per_call, cuda_graph'}")
        if on_cpu and self.l2_flush:
            raise ValueError(f"l2_flush=True does not apply to device={self.device!r}; it flushes a GPU's L2")

    @property
    def q_len(self) -> int:
        return self.seq if self.phase == "prefill" else self.decode_len

    @property
    def cached(self) -> int:
        """Keys read from the cache (prefix)."""
        if self.attention == "cross":
            return 0 if self.phase == "prefill" else self.seq
        return 0 if self.phase == "prefill" else self.seq

    @property
    def new_kv(self) -> int:
        """Keys computed and written by the step."""
        if self.attention == "cross":
            return self.seq if self.phase == "prefill" else 0
        return self.q_len

    @property
    def max_len(self) -> int:
        return self.seq + (self.decode_len if self.phase == "decode" and self.attention == "self" else 0)

    @property
    def capacities(self) -> int | list[int]:
        """Positions the cache holds per sequence: one number, or one per sequence when a paged
        cache gives each sequence of a ragged batch only its own pages."""
        new = self.max_len - self.seq
        if self.seq_lens is not None and self.page_size is not None:
            return [n + new for n in self.seq_lens]
        return self.max_len

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def identity(self, used_shape_keys: tuple[str, ...]) -> dict[str, object]:
        """The schema's identity columns: not the device index, not the host, not the time. The timing
        mode names the device type (cpu_wall: CPU). Shape fields a variant ignores, and a prefill's
        decode_len, do not split cases."""
        columns = self.columns()
        if self.phase == "prefill":
            columns["decode_len"] = 0
        shape = set(schema.SHAPE)
        # A uniform, contiguous case leaves seq_lens and page_size out: its case_id is the one it had
        # before they existed.
        optional = {k for k in ("seq_lens", "page_size", "family_shape") if columns.get(k) is None}
        if columns.get("kv_dtype") == "auto":  # a cache in the compute dtype: the case_id it always had
            optional.add("kv_dtype")
        return {k: columns[k] for k in schema.IDENTITY
                if (k not in shape or k in used_shape_keys) and k not in optional}

    def case_id(self, used_shape_keys: tuple[str, ...]) -> str:
        blob = json.dumps(self.identity(used_shape_keys), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def label(self) -> str:
        return case_label(self.columns())

    def columns(self) -> dict[str, object]:
        """The row's case, timing and shape columns, in the schema's order."""
        shape = self.shape.as_dict()
        values = {"variant": self.variant, "impl": self.impl, "compile": self.compile or "none",
                  "phase": self.phase, "attention": self.attention, "dtype": self.dtype, "batch": self.batch,
                  "seq": self.seq, "decode_len": self.decode_len, "timing": self.timing, "l2_flush": self.l2_flush,
                  "seq_lens": None if self.seq_lens is None else ",".join(map(str, self.seq_lens)),
                  "page_size": self.page_size,
                  "model": self.model, "device": self.device, "q_len": self.q_len,
                  "family_shape": family_shape(self.shape, self.variant),
                  **{k: shape[k] for k in schema.SHAPE}}
        return {k: values[k] for k in schema.NAMES if k in values}

    def replace(self, **changes: object) -> Case:
        return dataclasses.replace(self, **changes)
