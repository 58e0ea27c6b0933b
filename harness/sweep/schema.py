"""The typed schema of a run's configuration, for Hydra's ConfigStore: Hydra refuses a wrong type or
choice itself. The yaml files under ``conf/`` hold the values and their comments; these dataclasses
hold only the types (every field ``MISSING``), so a value is never written twice.

Numeric keys carry their range as field metadata (``Range``): Hydra checks the type, and
:func:`check_ranges` the range (finite, positive, sizes a row's int64 columns hold), both in the
pre-check. What Hydra cannot know (k/M sizes, heads % kv_heads, registry names, the device) is checked
by ``attnbench.harness.sweep.overrides`` on every job of a sweep, before the first one starts.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from attnbench.harness.errors import UserError
from attnbench.harness.measure.parse import DTYPES, MAX_SIZE
from attnbench.harness.measure.timer import CUDA_TIMINGS
from attnbench.harness.sweep.plan import PHASE_CHOICES
from attnbench.variants.layer import COMPILE_MODES
from attnbench.variants.shape import ATTENTION_KINDS, KV_DTYPES

# StrEnums: a composed value compares and prints as the plain string (cfg.phase == "decode"), and Hydra
# lists the members when a value is not one of them. Built from the lists the code checks against.
Task = StrEnum("Task", ["benchmark", "lowrank"])
Dtype = StrEnum("Dtype", ["auto", *DTYPES])
KvDtype = StrEnum("KvDtype", list(KV_DTYPES))
Compile = StrEnum("Compile", ["none", *COMPILE_MODES])
PhaseChoice = StrEnum("PhaseChoice", list(PHASE_CHOICES))
Attention = StrEnum("Attention", list(ATTENTION_KINDS))
CudaTiming = StrEnum("CudaTiming", list(CUDA_TIMINGS))
CHOICES = {"task": Task, "dtype": Dtype, "kv_dtype": KvDtype, "compile": Compile, "phase": PhaseChoice,
           "attention": Attention}



@dataclass(frozen=True)
class Range:
    """The values a numeric key allows: finite, within ``low``..``high`` (each bound open or closed)."""

    low: float
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    allow_inf: bool = False  # budget_s=inf: no budget

    def contains(self, value: float) -> bool:
        if math.isnan(value) or (math.isinf(value) and not (self.allow_inf and value > 0)):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and (below or (self.allow_inf and math.isinf(value)))

    def describe(self) -> str:
        if self.high == math.inf:
            text = f"a number {'>' if self.low_open else '>='} {self.low:g}"
            return text + (" (or inf)" if self.allow_inf else ", finite")
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"a number in {left}{self.low:g}, {self.high:g}{right}"


def _ranged(low: float, high: float = math.inf, **bounds: bool) -> Any:
    """A ``MISSING`` field carrying its range (read by :func:`check_ranges`)."""
    return field(default=MISSING, metadata={"range": Range(low, high, **bounds)})


SIZE = Range(1, MAX_SIZE)  # a count or a size: a positive integer a row's columns (and their products) hold
COUNT = Range(0, 2**31 - 1)
SEED = Range(0, 2**63 - 1)  # torch.manual_seed takes it, and the row's int64 seed column holds it

# The name the root schema has in the ConfigStore (first entry of conf/config.yaml's defaults list).
SCHEMA_NAME = "attnbench_schema"


@dataclass
class MeasureConfig:
    """``measure`` (conf/measure/*.yaml): the timing rules and guards of ``attnbench.harness.sweep.job``."""

    warmup_reps: int = _ranged(0, COUNT.high)
    warmup_s: float = _ranged(0, allow_inf=False)
    min_reps: int = _ranged(1, COUNT.high)
    max_reps: int = _ranged(1, COUNT.high)
    target_ci_rel: float = _ranged(0, 1, low_open=True, high_open=True)
    budget_s: float = _ranged(0, low_open=True, allow_inf=True)
    confidence: float = _ranged(0, 1, low_open=True, high_open=True)
    check_numerics: bool = MISSING
    max_step_s: float = _ranged(0, low_open=True, allow_inf=True)
    memory_headroom: float = _ranged(0, 1, low_open=True)
    cuda_graph: bool = MISSING
    cuda_timing: CudaTiming = MISSING
    l2_flush: bool = MISSING
    calibrate: bool = MISSING
    recalibrate: bool = MISSING
    telemetry_window_s: float = _ranged(0, low_open=True)


@dataclass
class RunConfig:
    """The top-level keys of conf/config.yaml."""

    # Groups. model is a shape preset (checked by variants.shape.ModelShape); variant and impl are
    # {name: <registered name or all>}, and tests may set a list of names: Any.
    model: Any = MISSING
    variant: Any = MISSING
    impl: Any = MISSING
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    # Added by experiment=lowrank_smollm2 (checked by harness.studies.lowrank.settings.StudySettings).
    lowrank: Optional[dict[str, Any]] = None

    task: Task = MISSING
    name: str = MISSING
    resume: bool = MISSING
    device: str = MISSING  # auto | cpu | cuda | cuda:<index>: checked (and looked for) by the pre-check
    dtype: Dtype = MISSING
    kv_dtype: KvDtype = MISSING
    compile: Compile = MISSING
    phase: PhaseChoice = MISSING
    seq: str = MISSING  # takes k/M suffixes (32k): a string, parsed by harness.measure.parse.parse_size
    batch: int = _ranged(SIZE.low, SIZE.high)
    decode_len: int = _ranged(SIZE.low, SIZE.high)
    # A list of sizes, "1k,4k" or a distribution's name: parsed by harness.sweep.plan.ragged_lengths.
    seq_lens: Any = MISSING
    page_size: Optional[int] = MISSING
    attention: Attention = MISSING
    seed: int = _ranged(SEED.low, SEED.high)
    threads: Optional[int] = _ranged(1, 4096)
    calibration_dir: str = MISSING
    gpu_lock_dir: Optional[str] = MISSING

    # Shape overrides: null keeps the preset's value. kv_heads and q_rank also take "none" (set them to
    # null), which an int field can't hold: strings, parsed by harness.sweep.plan.resolve_shape.
    hidden: Optional[int] = _ranged(SIZE.low, SIZE.high)
    heads: Optional[int] = _ranged(SIZE.low, SIZE.high)
    kv_heads: Optional[str] = MISSING
    head_dim: Optional[int] = _ranged(SIZE.low, SIZE.high)
    d_c: Optional[int] = _ranged(SIZE.low, SIZE.high)
    d_r: Optional[int] = _ranged(SIZE.low, SIZE.high)
    q_rank: Optional[str] = MISSING
    index_topk: Optional[int] = _ranged(SIZE.low, SIZE.high)


def ranges(node: type = RunConfig, prefix: str = "") -> dict[str, Range]:
    """Every ranged key of the schema, dotted (``measure.budget_s``), with its range."""
    found: dict[str, Range] = {}
    hints = typing.get_type_hints(node)
    for f in dataclasses.fields(node):
        if "range" in f.metadata:
            found[prefix + f.name] = f.metadata["range"]
        elif dataclasses.is_dataclass(hints[f.name]):
            found.update(ranges(hints[f.name], f"{prefix}{f.name}."))
    return found


def check_ranges(cfg: Mapping[str, Any]) -> None:
    """``UserError`` naming the first key of a composed config outside its range, and the range."""
    for key, allowed in ranges().items():
        node: Any = cfg
        for part in key.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if node is None or isinstance(node, bool):
            continue  # null (keep the preset's value); a bool is refused by Hydra's types
        if isinstance(node, int):  # exact: a huge int has no float
            if not allowed.low <= node <= allowed.high:
                low, high = int(allowed.low), int(allowed.high)
                kind = f"a positive integer (at most {high})" if low == 1 else f"an integer from {low} to {high}"
                raise UserError(f"{key}={node!r} is not allowed: {key} must be {kind}")
        elif not allowed.contains(float(node)):
            raise UserError(f"{key}={node!r} is not allowed: {key} must be {allowed.describe()}")


def store_configs() -> None:
    """Put the schema and one ``variant``/``impl`` option per registered name (entry-point plugins
    included) in Hydra's ConfigStore. Called at start-up, before anything composes; idempotent."""
    from attnbench.variants.registry import IMPLEMENTATIONS, VARIANTS

    store = ConfigStore.instance()
    store.store(name=SCHEMA_NAME, node=RunConfig, provider="attnbench")
    for group, registry in (("variant", VARIANTS), ("impl", IMPLEMENTATIONS)):
        for name in registry.names():
            store.store(group=group, name=name, node={"name": name}, provider="attnbench")
