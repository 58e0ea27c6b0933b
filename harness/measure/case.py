"""A case: one thing to measure, in typed values. A job (one Hydra config) expands into several.

What users type (``seq=32k``, ``device=auto``) is parsed before a case is made, once, at the edge
(``attnbench.harness.sweep.plan.job_spec``, with ``attnbench.harness.measure.parse``); a case checks only that its
values fit together, raising a one-line ``ValueError`` naming the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Literal

import torch

from attnbench.harness.measure.parse import DTYPES, Timing
from attnbench.harness.results import schema
from attnbench.harness.text.label import case_label
from attnbench.variants.registry import family_shape
from attnbench.variants.shape import ModelShape

Phase = Literal["prefill", "decode"]


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
