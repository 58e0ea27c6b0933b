"""The typed schema of a run's configuration, for Hydra's ConfigStore: Hydra refuses a wrong type or
choice itself. The yaml files under ``conf/`` hold the values and their comments; these dataclasses
hold only the types (every field ``MISSING``), so a value is never written twice.

What Hydra cannot know (k/M sizes, heads % kv_heads, registry names, the device) is checked by
``harness.sweep.overrides`` on every job of a sweep, before the first one starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from harness.measure.case import DTYPES
from harness.measure.timer import CUDA_TIMINGS
from harness.sweep.plan import PHASE_CHOICES
from variants.layer import COMPILE_MODES
from variants.shape import ATTENTION_KINDS, KV_DTYPES

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

# The name the root schema has in the ConfigStore (first entry of conf/config.yaml's defaults list).
SCHEMA_NAME = "attnbench_schema"


@dataclass
class MeasureConfig:
    """``measure`` (conf/measure/*.yaml): the timing rules and guards of ``harness.sweep.job``."""

    warmup_reps: int = MISSING
    warmup_s: float = MISSING
    min_reps: int = MISSING
    max_reps: int = MISSING
    target_ci_rel: float = MISSING
    budget_s: float = MISSING
    confidence: float = MISSING
    check_numerics: bool = MISSING
    max_step_s: float = MISSING
    memory_headroom: float = MISSING
    cuda_graph: bool = MISSING
    cuda_timing: CudaTiming = MISSING
    l2_flush: bool = MISSING
    calibrate: bool = MISSING
    recalibrate: bool = MISSING
    telemetry_window_s: float = MISSING


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
    seq: str = MISSING  # takes k/M suffixes (32k): a string, parsed by harness.measure.case.parse_size
    batch: int = MISSING
    decode_len: int = MISSING
    # A list of sizes, "1k,4k" or a distribution's name: parsed by harness.sweep.plan.ragged_lengths.
    seq_lens: Any = MISSING
    page_size: Optional[int] = MISSING
    attention: Attention = MISSING
    seed: int = MISSING
    threads: Optional[int] = MISSING
    calibration_dir: str = MISSING
    gpu_lock_dir: Optional[str] = MISSING

    # Shape overrides: null keeps the preset's value. kv_heads and q_rank also take "none" (set them to
    # null), which an int field can't hold: strings, parsed by harness.sweep.plan.resolve_shape.
    hidden: Optional[int] = MISSING
    heads: Optional[int] = MISSING
    kv_heads: Optional[str] = MISSING
    head_dim: Optional[int] = MISSING
    d_c: Optional[int] = MISSING
    d_r: Optional[int] = MISSING
    q_rank: Optional[str] = MISSING
    index_topk: Optional[int] = MISSING


def store_configs() -> None:
    """Put the schema and one ``variant``/``impl`` option per registered name (entry-point plugins
    included) in Hydra's ConfigStore. Called at start-up, before anything composes; idempotent."""
    from variants.registry import IMPLEMENTATIONS, VARIANTS

    store = ConfigStore.instance()
    store.store(name=SCHEMA_NAME, node=RunConfig, provider="attnbench")
    for group, registry in (("variant", VARIANTS), ("impl", IMPLEMENTATIONS)):
        for name in registry.names():
            store.store(group=group, name=name, node={"name": name}, provider="attnbench")
