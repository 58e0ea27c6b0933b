"""A case: one thing to measure. A job (one Hydra config) expands into several.

The sizes users type (``seq=32k``) are parsed here; every user-facing check raises a one-line
``ValueError`` naming the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Literal

import torch

from variants.shape import ModelShape

Phase = Literal["prefill", "decode"]
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                                  "float16": torch.float16, "float64": torch.float64}
_SIZE = re.compile(r"^\s*(\d+)\s*([kKmM]?)\s*$")


def parse_size(name: str, value: object) -> int:
    """``32k`` -> 32768, ``1M`` -> 1048576, ``4096`` -> 4096; positive integers only."""
    if isinstance(value, bool):
        raise ValueError(f"{name}={value!r} is not a size; use a positive integer or a k/M suffix like 32k")
    if isinstance(value, int):
        number = value
    else:
        match = _SIZE.match(str(value))
        if not match:
            raise ValueError(f"{name}={value!r} is not a size; use a positive integer or a k/M suffix like 32k")
        number = int(match.group(1)) * {"": 1, "k": 1024, "m": 1024 ** 2}[match.group(2).lower()]
    if number <= 0:
        raise ValueError(f"{name}={value!r} is not allowed: {name} must be a positive integer")
    return number


def format_size(n: int) -> str:
    for unit, scale in (("M", 1024 ** 2), ("k", 1024)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def resolve_device(value: str) -> torch.device:
    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
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
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def identity(self, used_shape_keys: tuple[str, ...]) -> dict[str, object]:
        """What makes two cases the same measurement: not the device index, not the time."""
        shape = self.shape.as_dict()
        return {"variant": self.variant, "impl": self.impl, "compile": self.compile, "phase": self.phase,
                "batch": self.batch, "seq": self.seq, "decode_len": self.decode_len if self.phase == "decode" else 0,
                "dtype": self.dtype, "device_type": torch.device(self.device).type, "attention": self.attention,
                **{k: shape[k] for k in sorted(used_shape_keys)}}

    def case_id(self, used_shape_keys: tuple[str, ...]) -> str:
        blob = json.dumps(self.identity(used_shape_keys), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def label(self) -> str:
        comp = f"+compile:{self.compile}" if self.compile else ""
        steps = f" L={self.decode_len}" if self.phase == "decode" and self.decode_len != 1 else ""
        return (f"{self.variant}/{self.impl}{comp} {self.phase}{steps} seq={format_size(self.seq)} "
                f"batch={self.batch} {self.dtype}")

    def columns(self) -> dict[str, object]:
        shape = self.shape.as_dict()
        shape_cols = {k: shape[k] for k in ("hidden", "heads", "kv_heads", "head_dim", "d_c", "d_r", "q_rank",
                                            "nope_head_dim", "v_head_dim", "num_layers")}
        return {"variant": self.variant, "impl": self.impl, "compile": self.compile or "none",
                "phase": self.phase, "model": self.model, "batch": self.batch, "seq": self.seq,
                "decode_len": self.decode_len, "q_len": self.q_len, "dtype": self.dtype, "device": self.device,
                "attention": self.attention, **shape_cols}

    def replace(self, **changes: object) -> Case:
        return dataclasses.replace(self, **changes)
