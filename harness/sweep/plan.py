"""From one job's configuration to the list of cases it measures: ``job_spec`` reads the config
into typed values once (the edge), ``expand`` makes the cases of them.

``variant=all`` and ``impl=all`` mean every registered one that supports the case: combinations
that can't run are left out of the plan. A combination named explicitly that can't run becomes a
``skipped`` row with the implementation's reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from attnbench import variants
from attnbench.harness.errors import UserError
from attnbench.harness.measure.case import Case, Phase
from attnbench.harness.measure.parse import Timing, parse_size, resolve_device, resolve_dtype, timing_mode
from attnbench.harness.results import schema
from attnbench.variants.layer import COMPILE_MODES
from attnbench.variants.cache import check_page_size
from attnbench.variants.registry import IMPLEMENTATIONS, VARIANTS
from attnbench.variants.shape import ModelShape

PHASE_CHOICES = ("decode", "prefill", "both")
# A top-level key named like an integer shape column overrides the preset (conf/config.yaml lists
# those a user usually changes); the schema's shape columns are the one list of them.
SHAPE_KEYS = tuple(k for k in schema.SHAPE if schema.BY_NAME[k].kind == "int64")
_OPTIONAL_SHAPE_KEYS = ("kv_heads", "q_rank", "nope_head_dim", "v_head_dim")  # "none" sets them to null


def _names(value: Any, registry, key: str) -> tuple[list[str], bool]:
    """Names from ``all``, one name, or a list; the flag says whether they were asked for by name."""
    if value in (None, "all"):
        return registry.names(), False
    names = [value] if isinstance(value, str) else list(value)
    valid = registry.names()
    for name in names:
        if name not in valid:
            raise ValueError(f"{key}={name!r} is not one of: {', '.join(valid)}, all")
    return names, True


def group_name(value: Any) -> Any:
    """A config group entry (``{name: mla, ...}``) or a plain value."""
    return value.get("name") if isinstance(value, Mapping) else value


def resolve_shape(cfg: Mapping[str, Any]) -> tuple[str, ModelShape]:
    preset = dict(cfg["model"] or {})
    model = str(preset.get("name", "custom"))
    needed = [f.name for f in dataclasses.fields(ModelShape)
              if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [key for key in needed if preset.get(key) is None]
    if missing:  # an empty or partial preset of one's own (--config-dir): named, not a TypeError
        raise UserError(f"model preset {model!r} lacks {', '.join(missing)}; a preset sets at least: "
                        f"{', '.join(needed)} (see conf/model/tiny.yaml)")
    shape = ModelShape.from_dict({k: v for k, v in preset.items() if k != "weights"})
    changes: dict[str, Any] = {}
    for key in SHAPE_KEYS:
        value = cfg.get(key)
        if value is None:
            continue
        if key in _OPTIONAL_SHAPE_KEYS and str(value).lower() == "none":
            changes[key] = None
        else:
            changes[key] = parse_size(key, value)
    if cfg.get("kv_dtype") is not None:
        changes["kv_dtype"] = str(cfg["kv_dtype"])
    return model, shape.replace(**changes)


def _device(value: str, *, local: bool) -> torch.device:
    if local or not value.startswith("cuda"):
        return resolve_device(value)
    try:
        return torch.device(value)
    except RuntimeError:
        raise ValueError(f"device={value!r} is not one of: auto, cpu, cuda, cuda:<index>") from None


SEQ_LENS_DISTRIBUTIONS: tuple[str, ...] = ("spread",)
MAX_RAGGED_BATCH = 2**20  # a list of 2^31 lengths took 17 GB before the memory guard could skip the case


def _int_or(value: Any) -> Any:
    """An int from a command-line string ("64"), anything else unchanged (checked by the caller)."""
    return int(value) if isinstance(value, str) and value.strip().isdigit() else value


def ragged_lengths(value: Any, *, seq: int, batch: int) -> tuple[int, ...] | None:
    """``seq_lens``: a list of sizes (``[1k,4k,32k,32k]`` or ``"1k,4k,32k,32k"``), tiled over the
    batch when it divides it; or a named distribution of ``batch`` lengths up to ``seq``
    (``spread``: ``seq·(b+1)/batch``, from short to the full context). None: a uniform batch."""
    if value in (None, "none"):
        return None
    if batch > MAX_RAGGED_BATCH:  # one length per sequence, in the plan and in the cache's tables
        raise ValueError(f"seq_lens with batch={batch}: a ragged batch holds at most {MAX_RAGGED_BATCH} sequences "
                         "(one length each); use a smaller batch, or seq_lens=none")
    if isinstance(value, str) and value in SEQ_LENS_DISTRIBUTIONS:
        return tuple(max(1, seq * (b + 1) // batch) for b in range(batch))
    if isinstance(value, str):
        items = value.split(",") if value.strip() else []
    else:
        items = list(value)
    lengths = [parse_size("seq_lens", item.strip() if isinstance(item, str) else item) for item in items]
    if not lengths:
        raise ValueError(f"seq_lens={value!r} holds no length; give sizes like [1k,4k], a distribution "
                         f"({', '.join(SEQ_LENS_DISTRIBUTIONS)}), or none")
    if len(lengths) > batch or batch % len(lengths):
        raise ValueError(f"seq_lens has {len(lengths)} lengths for batch={batch}; give batch lengths "
                         f"(or a number of lengths that divides it, repeated)")
    return tuple(lengths * (batch // len(lengths)))


@dataclass(frozen=True)
class JobSpec:
    """One job's configuration as typed values, read from the config once (``job_spec``): ``expand``
    makes cases of it with no text left to parse."""

    device: torch.device
    dtype: torch.dtype
    model: str  # the preset's name
    shape: ModelShape
    variants: tuple[str, ...]
    variants_named: bool  # asked for by name (not "all"): a combination that can't run is a skipped row
    impls: tuple[str, ...]
    impls_named: bool
    phases: tuple[Phase, ...]
    compile: str | None
    seq: int  # a ragged batch's longest sequence
    batch: int
    decode_len: int
    seq_lens: tuple[int, ...] | None
    page_size: int | None
    attention: str
    timing: Timing
    l2_flush: bool

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    @property
    def device_name(self) -> str:
        return str(self.device) if self.device.type == "cpu" else f"cuda:{self.device.index or 0}"


def plan_cases(cfg: Mapping[str, Any], *, local: bool = True, left_out: dict[str, str] | None = None) -> list[Case]:
    """Every case of one job, in a stable order; raises ``ValueError`` for bad input.

    ``local=False``: the job will run on another machine (a SLURM launcher), so a ``cuda`` device is
    not looked for here (the pre-check on a login node without a GPU). ``left_out`` receives each
    variant ``all`` dropped whole, with why (the job log says it)."""
    return expand(job_spec(cfg, local=local), left_out=left_out)


def job_spec(cfg: Mapping[str, Any], *, local: bool = True) -> JobSpec:
    """The edge: every value of the config a case needs, parsed and checked here and nowhere later
    (in this order, so that of several bad values the same one is named first)."""
    device = _device(str(cfg.get("device", "auto")), local=local)
    dtype = resolve_dtype(str(cfg.get("dtype", "auto")), device)
    model, shape = resolve_shape(cfg)
    variant_names, variant_named = _names(group_name(cfg.get("variant")), VARIANTS, "variant")
    impl_names, impl_named = _names(group_name(cfg.get("impl")), IMPLEMENTATIONS, "impl")
    phases, compile_mode = _phases(cfg), _compile_mode(cfg)
    seq = parse_size("seq", cfg.get("seq", "4k"))
    batch = parse_size("batch", cfg.get("batch", 1))
    page_size = cfg.get("page_size")
    page_size = None if page_size in (None, "none") else check_page_size(_int_or(page_size))
    seq_lens = ragged_lengths(cfg.get("seq_lens"), seq=seq, batch=batch)
    decode_len = parse_size("decode_len", cfg.get("decode_len", 1))
    measure = cfg.get("measure") or {}
    timing = timing_mode(device, cuda_graph=bool(measure.get("cuda_graph", False)),
                         cuda_timing=str(measure.get("cuda_timing", "held")))
    return JobSpec(
        device=device, dtype=dtype, model=model, shape=shape, variants=tuple(variant_names),
        variants_named=variant_named, impls=tuple(impl_names), impls_named=impl_named, phases=phases,
        compile=compile_mode, seq=max(seq_lens) if seq_lens is not None else seq, batch=batch, decode_len=decode_len,
        seq_lens=seq_lens, page_size=page_size, attention=str(cfg.get("attention", "self")), timing=timing,
        # CpuTimer has no cache to flush: a CPU case records what was done, not what was asked.
        l2_flush=device.type == "cuda" and bool(measure.get("l2_flush", False)))


def _phases(cfg: Mapping[str, Any]) -> tuple[Phase, ...]:
    phase = str(cfg.get("phase", "decode"))
    if phase not in PHASE_CHOICES:
        raise ValueError(f"phase={phase!r} is not one of: {', '.join(PHASE_CHOICES)}")
    return ("prefill", "decode") if phase == "both" else (phase,)  # type: ignore[return-value] - checked above


def _compile_mode(cfg: Mapping[str, Any]) -> str | None:
    mode = cfg.get("compile", "none")
    mode = None if mode in (None, "none", False) else str(mode)
    if mode is not None and mode not in COMPILE_MODES:
        raise ValueError(f"compile={mode!r} is not one of: none, {', '.join(COMPILE_MODES)}")
    return mode


def expand(spec: JobSpec, *, left_out: dict[str, str] | None = None) -> list[Case]:
    """The job's cases: each variant the shape makes, by each implementation and phase that runs it
    (or was asked for by name: then its reason becomes a skipped row). ``left_out``: see plan_cases."""
    cases = []
    for variant in spec.variants:
        # Built on the meta device: checks the shape for this variant and asks support without
        # allocating a single weight.
        try:
            layer = variants.build(variant, spec.shape, attention=spec.attention, dtype=spec.dtype, device="meta")
        except ValueError as error:
            if spec.variants_named:
                raise
            if left_out is not None:  # "all": only the variants this shape makes (swa needs a sliding window)
                left_out[variant] = str(error)
            continue
        reasons = []
        for impl_name in spec.impls:
            impl = IMPLEMENTATIONS.get(impl_name)
            for phase in spec.phases:
                reason = impl.supports(layer, phase=phase, device=spec.device, dtype=spec.dtype)
                if reason is not None and not (spec.impls_named and spec.variants_named):
                    reasons.append(reason)
                    continue  # "all": only what runs
                cases.append(_case(spec, variant, impl_name, phase))
        if left_out is not None and reasons and not any(case.variant == variant for case in cases):
            left_out[variant] = reasons[0]  # no implementation runs it here (gdn with an fp8 cache)
    if not cases:
        raise ValueError(f"no implementation among {', '.join(spec.impls)} supports "
                         f"{', '.join(spec.variants)} on {spec.device.type} in {spec.dtype_name}")
    return cases


def _case(spec: JobSpec, variant: str, impl: str, phase: Phase) -> Case:
    return Case(variant=variant, impl=impl, compile=spec.compile, phase=phase, model=spec.model, shape=spec.shape,
                batch=spec.batch, seq=spec.seq, decode_len=spec.decode_len, dtype=spec.dtype_name,
                device=spec.device_name, attention=spec.attention, timing=spec.timing, l2_flush=spec.l2_flush,
                seq_lens=spec.seq_lens if phase == "decode" else None, page_size=spec.page_size)
