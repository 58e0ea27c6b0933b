"""The result row, declared once: every column's name, type, unit, group and meaning.

Every list of columns elsewhere derives from ``COLUMNS``: a case's identity (``case_id``), the
columns nulled when a case does not pass, the progress summary, the report's and the nightly
history's column lists. Row files are written with ``ARROW_SCHEMA`` (every column, stable types,
nullable, never Arrow's ``null`` type), so plain ``pandas.read_parquet`` concatenates CPU and GPU
rows. ``docs/results-schema.md`` is generated from here: ``python -m attnbench.harness.results.schema``.

Units are in the names (``_ms``, ``_s``, ``_bytes``, ``_w``, ``_j``, ``_pct``, ``_mhz``); the three
rates without a suffix are decimal: ``gbps`` is GB/s = 1e9 bytes/s, ``tflops`` is 1e12 FLOP/s. Each
row file also carries every column's unit in its Arrow field metadata (``{"unit": "ms"}``), and
every time column (``finished_at``, ``env_time_utc``, ``ceiling_measured_at``) is a UTC timestamp.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa

from attnbench.variants.registry import family_shape_keys
from attnbench.variants.shape import ModelShape, field_names

Kind = Literal["string", "int64", "float64", "bool", "timestamp", "list<float64>"]
Group = Literal["identity", "case", "trust", "shape", "timing", "derived", "memory", "numerics", "telemetry",
                "overhead", "provenance", "env"]
GROUPS: tuple[str, ...] = ("identity", "case", "trust", "shape", "timing", "derived", "memory", "numerics",
                           "telemetry", "overhead", "provenance", "env")
# The pyarrow type each kind is written as, and the pandas dtype ``attnbench.harness.results.load`` gives it.
ARROW_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"), "list<float64>": pa.list_(pa.float64()),
}
PANDAS_DTYPES: dict[str, str] = {"string": "str", "int64": "Int64", "float64": "float64", "bool": "boolean",
                                 "timestamp": "datetime64[us, UTC]", "list<float64>": "object"}
TIMING_MODES: tuple[str, ...] = ("cpu_wall", "cuda_events", "cuda_events_per_call", "cuda_graph")
STATUS_VALUES: tuple[str, ...] = ("ok", "skipped", "oom", "error", "incorrect")
# Why a row's number may not mean what its label says, in this order in ``flags`` (harness.measure.trust).
FLAG_VALUES: tuple[str, ...] = ("noisy", "fallback", "busy", "above_ceiling")


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    unit: str  # "" for a name, a label or a count of things
    group: Group
    meaning: str
    identity: bool = False  # part of case_id: two rows that agree on these measured the same case
    measured: bool = False  # a figure from the timed step: nulled unless status == "ok"
    summary: bool = False  # printed in the table at the end of a job

    def __post_init__(self) -> None:
        assert self.group in GROUPS and self.kind in ARROW_TYPES, self
        assert not (self.identity and self.measured), f"{self.name}: an identity column is not a measurement"

    @property
    def arrow_type(self) -> pa.DataType:
        return ARROW_TYPES[self.kind]


def _c(name: str, kind: Kind, unit: str, group: Group, meaning: str, **flags: bool) -> Column:
    return Column(name, kind, unit, group, meaning, **flags)


def family_columns() -> tuple[Column, ...]:
    """A column per family shape key its family declares a column, or that is a ``ModelShape`` field (the
    others travel in ``family_shape``), with the kind, unit and meaning its family declares
    (``attnbench.variants.core.family.shape_field``)."""
    fields = set(field_names(ModelShape))
    return tuple(Column(key.name, key.kind, key.unit, "shape", key.meaning, identity=key.identity)  # type: ignore[arg-type]
                 for key in family_shape_keys().values() if key.column or key.name in fields)


_ID = {"identity": True}
_M = {"measured": True}
_S = {"summary": True}

COLUMNS: tuple[Column, ...] = (
    # Identity: what makes two rows the same measurement. Not the device index, the host or the time.
    _c("case_id", "string", "", "identity", "16 hex digits of SHA-256 over the identity columns below"),
    _c("variant", "string", "", "case", "attention variant (mha, mqa, gqa, mla)", **_ID, **_S),
    _c("impl", "string", "", "case", "implementation (eager, sdpa, absorbed, ...)", **_ID, **_S),
    _c("compile", "string", "", "case", "torch.compile mode, or none", **_ID, **_S),
    _c("phase", "string", "", "case", "prefill or decode", **_ID, **_S),
    _c("attention", "string", "", "case", "self or cross attention", **_ID),
    _c("dtype", "string", "", "case", "element type of weights, activations and cache", **_ID),
    _c("batch", "int64", "sequences", "case", "sequences per step", **_ID, **_S),
    _c("seq", "int64", "tokens", "case", "decode: tokens already cached; prefill: prompt length", **_ID, **_S),
    _c("decode_len", "int64", "tokens", "case", "new tokens per decode step (ignored by a prefill's case_id)", **_ID),
    _c("seq_lens", "string", "tokens", "case", "a ragged decode batch: tokens cached per sequence, comma-separated "
       "(seq is the longest); null: every sequence holds seq (not in the case_id when null)", **_ID),
    _c("page_size", "int64", "tokens", "case", "positions per page of a paged cache; null: a contiguous cache "
       "(not in the case_id when null)", **_ID),
    _c("timing", "string", "", "timing",
       "how a step is timed: cpu_wall (perf_counter); cuda_events (held: the stream is held by a spin "
       "kernel while a batch of calls is enqueued, so host dispatch is excluded); cuda_events_per_call (record, "
       "call, record, sync: counts host dispatch); cuda_graph (held batch of graph replays)", **_ID),
    _c("l2_flush", "bool", "", "timing", "the GPU's L2 cache is flushed before each timed step (always false on "
       "CPU)", **_ID),
    # Shape: the model's attention shape (variants.shape.ModelShape); only the fields a variant uses
    # (VariantSpec.uses) enter its case_id. The universal ones here, the families' own below.
    _c("hidden", "int64", "", "shape", "D, the residual width", **_ID),
    _c("heads", "int64", "", "shape", "N, query heads", **_ID),
    _c("head_dim", "int64", "", "shape", "H, per-head dim", **_ID),
    _c("kv_heads", "int64", "", "shape", "K, key/value heads of gqa (null: heads)", **_ID),
    _c("num_layers", "int64", "", "shape", "layers, for whole-model figures only", **_ID),
    _c("rope_theta", "float64", "", "shape", "RoPE base frequency", **_ID),
    _c("rope_layout", "string", "", "shape", "RoPE pairing: half (rotate_half) or interleaved", **_ID),
    _c("qkv_bias", "bool", "", "shape", "q, k and v projections have biases (Qwen2)", **_ID),
    # Each family's own shape keys (variants.core.family.Family.shape), declared in its package.
    *family_columns(),
    _c("kv_dtype", "string", "", "shape", "KV cache storage: auto (the compute dtype), fp8_e4m3 (per-token "
       "scaled) or fp8_model1 (DeepSeek-V4's 584-byte FlashMLA entries); not in the case_id when auto", **_ID),
    # The rest of the case and its outcome.
    _c("family_shape", "string", "", "case", "a family's shape keys that are not columns of their own, as a JSON "
       "object of the keys the variant uses (null: none; not in the case_id when null)", **_ID),
    _c("model", "string", "", "case", "preset the shape came from"),
    _c("device", "string", "", "case", "torch device the case ran on (cpu, cuda:0)"),
    _c("q_len", "int64", "tokens", "case", "query tokens per step: seq for prefill, decode_len for decode"),
    _c("status", "string", "", "case", "ok, skipped, oom, error or incorrect", **_S),
    _c("reason", "string", "", "case", "why a case is not ok (one line); empty when ok", **_S),
    # Trust: whether a row's number can be taken at its word (harness.measure.trust). Not nulled on
    # failure: a busy machine or a fallback also explains an error. Null in rows written before them.
    # flags is a string like sdpa_backend, not a list: it survives CSV, markdown and a pandas filter
    # (rows["flags"].str.contains("noisy"); not rows.flags, which is pandas' own DataFrame.flags) unchanged,
    # where a list column would not.
    _c("flags", "string", "", "trust", "comma-separated, in this order: noisy (latency_ci_rel over "
       "measure.target_ci_rel), fallback (a kernel fell back or ran another path than its label: fallback_reason), "
       "busy (other processes' load over 0.5 per CPU at the case's start or end, or their share of our CPUs during "
       "the case over 0.25 beyond what our threads leave free), above_ceiling (above a calibrated "
       "roof after the ceilings were checked); empty: none", **_S),
    _c("fallback_reason", "string", "", "trust", "the message that made the row a fallback (torch's warning, or "
       "SDPA's math backend on CUDA); empty: none"),
    _c("warnings", "string", "", "trust", "Python and torch warnings (dynamo, inductor logs) raised during the case, "
       "distinct ones joined by ' | ' with their counts, at most 2000 characters; empty: none"),
    _c("load_start", "float64", "tasks/CPU", "trust", "the machine's 1-minute load average over its CPU count when "
       "the case started (this process's own threads included; null: not available)"),
    _c("load_end", "float64", "tasks/CPU", "trust", "the same when the case finished"),
    _c("others_cpu_share", "float64", "fraction", "trust", "the share of this process's CPUs other processes used "
       "while the case ran (/proc/stat less this process's CPU time; null: not available)"),
    _c("remeasured", "bool", "", "trust", "the row was noisy and its case was measured again at the end of the "
       "job; the row holds the measurement with the tighter CI"),
    # Analytic counts from the variant's cost model (variants/cost.py).
    _c("flops", "int64", "FLOP", "derived", "floating-point operations of one step (cost model)"),
    _c("indexer_flops", "int64", "FLOP", "derived", "the lightning indexer's share of flops (0: no indexer)"),
    _c("indexer_bytes", "int64", "bytes", "derived", "the lightning indexer's share of bytes_min (0: no indexer)"),
    _c("bytes_min", "int64", "bytes", "derived", "minimum bytes one step must move (cost model)"),
    _c("weight_bytes", "int64", "bytes", "derived", "weights read by one step"),
    _c("cache_read_bytes", "int64", "bytes", "derived", "KV cache bytes read by one step"),
    _c("cache_write_bytes", "int64", "bytes", "derived", "KV cache bytes written by one step"),
    _c("activation_bytes", "int64", "bytes", "derived", "activations read and written by one step"),
    _c("params", "int64", "parameters", "derived", "parameters of one layer"),
    _c("intensity_flops_per_byte", "float64", "FLOP/byte", "derived", "flops / bytes_min"),
    _c("predicted_step_s", "float64", "s", "derived", "roofline lower bound of one step (quiet calibrated "
       "ceilings, else built-in rates)"),
    # Timing of the steady state (harness.measure.stats), in milliseconds unless named otherwise.
    _c("first_call_ms", "float64", "ms", "timing", "first call: compile, autotune, lazy initialisation", **_M),
    _c("latency_ms", "float64", "ms", "timing", "median step latency", **_M, **_S),
    _c("latency_mean_ms", "float64", "ms", "timing", "mean step latency", **_M),
    _c("latency_std_ms", "float64", "ms", "timing", "sample standard deviation (n - 1)", **_M),
    _c("latency_min_ms", "float64", "ms", "timing", "fastest sample", **_M),
    _c("latency_p10_ms", "float64", "ms", "timing", "10th percentile", **_M),
    _c("latency_p90_ms", "float64", "ms", "timing", "90th percentile", **_M),
    _c("latency_ci_low_ms", "float64", "ms", "timing", "lower end of the median's distribution-free CI", **_M),
    _c("latency_ci_high_ms", "float64", "ms", "timing", "upper end of the median's distribution-free CI", **_M),
    _c("latency_ci_rel", "float64", "fraction", "timing", "CI half-width / median (inf: too few samples)", **_M, **_S),
    _c("n_reps", "int64", "samples", "timing", "timed repetitions", **_M),
    _c("samples_ms", "list<float64>", "ms", "timing", "every steady-state sample, in order", **_M),
    _c("warmup_reps", "int64", "calls", "timing", "untimed calls before the first sample", **_M),
    _c("stop_reason", "string", "", "timing", "which stopping rule ended the sampling", **_M),
    _c("timing_batch", "int64", "calls", "timing", "calls per held CUDA sample (a sample is their mean; 1 on "
       "CPU and per-call timing)", **_M),
    _c("timing_hold_expired", "int64", "samples", "timing", "held samples whose hold ran out before the batch "
       "was enqueued (they may include host dispatch)", **_M),
    _c("compile_cudagraph_skipped", "string", "", "timing", "why inductor did not use CUDA graphs under "
       "compile=reduce-overhead/max-autotune (empty: it did; null: not such a mode)"),
    _c("compile_cache_hit", "bool", "", "timing", "the compile hit inductor's on-disk FX graph cache (first_call_ms "
       "then holds no code generation); null: not compiled"),
    _c("sdpa_backend", "string", "", "timing", "SDPA backends the step's calls ran (flash, efficient, cudnn, math, "
       "comma-separated; empty: none called)"),
    # Derived from the median latency (harness.measure.metrics).
    _c("tokens_per_s", "float64", "tokens/s", "derived", "batch * q_len / median latency", **_M, **_S),
    _c("tflops", "float64", "TFLOP/s (1e12 FLOP/s)", "derived", "flops / median latency", **_M, **_S),
    _c("frac_peak_flops", "float64", "fraction", "derived", "tflops / calibrated matmul ceiling", **_M),
    _c("gbps", "float64", "GB/s (1e9 bytes/s)", "derived", "bytes_min / median latency: a lower bound of the "
       "real traffic", **_M, **_S),
    _c("frac_peak_bandwidth", "float64", "fraction", "derived", "gbps / the faster calibrated stream (read or "
       "copy)", **_M, **_S),
    # Memory.
    _c("kv_bytes_per_token", "int64", "bytes", "memory", "KV cache bytes per token, one layer"),
    _c("kv_bytes_per_token_model", "int64", "bytes", "memory", "KV cache bytes per token, num_layers layers"),
    _c("kv_cache_bytes_analytic", "int64", "bytes", "memory", "batch * (seq + new tokens) * kv_bytes_per_token"),
    _c("kv_cache_bytes", "int64", "bytes", "memory", "bytes of the allocated cache (equals the analytic count)",
       **_S),
    _c("predicted_mem_bytes", "int64", "bytes", "memory", "predicted peak memory, checked before allocating"),
    _c("peak_mem_bytes", "int64", "bytes", "memory", "measured peak memory of one step, resident tensors included",
       **_M, **_S),
    _c("peak_mem_over_predicted", "float64", "ratio", "memory", "peak_mem_bytes / predicted_mem_bytes (same "
       "scope: one step, everything held)", **_M),
    _c("device_mem_total_bytes", "int64", "bytes", "memory", "the device's total memory"),
    _c("working_set_bytes", "int64", "bytes", "memory", "bytes one step reads and writes at least (bytes_min), "
       "to compare with l2_bytes"),
    _c("l2_bytes", "int64", "bytes", "memory", "the GPU's L2 cache size (null on CPU)"),
    _c("l2_resident", "bool", "", "memory", "the working set fits in L2 and l2_flush is off: a hot-cache figure "
       "that may beat the HBM ceiling"),
    # Numerics: kept on failure, they are the reason for an incorrect status.
    _c("numerics_rel_err", "float64", "relative", "numerics", "error against the float64 reference, reduced shape",
       **_S),
    _c("numerics_max_abs_err", "float64", "", "numerics", "largest elementwise |output - reference| of that check "
       "(the layer's output units; FlashInfer-Trace's max_absolute_error)"),
    _c("numerics_tol", "float64", "relative", "numerics", "tolerance numerics_rel_err is held to"),
    _c("numerics_compile_rel_err", "float64", "relative", "numerics", "compiled output against the uncompiled one"),
    _c("numerics_full_rel_err", "float64", "relative", "numerics", "one full-shape output of the timed step (graph "
       "replay, compiled) against the uncompiled eager step"),
    # GPU telemetry over a window apart from the samples (harness.measure.telemetry); null without NVML.
    _c("nvml_samples", "int64", "samples", "telemetry", "NVML polls in the window", **_M),
    _c("nvml_window_s", "float64", "s", "telemetry", "length of the telemetry window", **_M),
    _c("nvml_gpu_util_pct", "float64", "%", "telemetry", "mean share of time any kernel ran", **_M),
    _c("nvml_mem_util_pct", "float64", "%", "telemetry", "mean share of time memory was read or written", **_M),
    _c("nvml_mem_used_peak_bytes", "int64", "bytes", "telemetry", "peak device memory used, all processes", **_M),
    _c("nvml_power_mean_w", "float64", "W", "telemetry", "mean board power", **_M, **_S),
    _c("nvml_energy_j", "float64", "J", "telemetry", "energy over the window", **_M),
    _c("nvml_energy_source", "string", "", "telemetry", "counter or power_integral", **_M),
    _c("nvml_energy_per_token_j", "float64", "J/token", "telemetry", "energy / tokens processed in the window",
       **_M, **_S),
    _c("nvml_sm_clock_mhz", "float64", "MHz", "telemetry", "mean SM clock", **_M),
    _c("nvml_mem_clock_mhz", "float64", "MHz", "telemetry", "mean memory clock", **_M),
    _c("nvml_temp_max_c", "float64", "degC", "telemetry", "hottest GPU temperature seen", **_M),
    _c("nvml_throttled", "bool", "", "telemetry", "a clock-limiting reason was seen", **_M),
    _c("nvml_throttle_reasons", "string", "", "telemetry", "clock-event reasons seen, comma-separated", **_M),
    # Where the harness's own time went (kept on failure: they say what a failed case cost).
    _c("numerics_s", "float64", "s", "overhead", "numerics check"),
    _c("setup_s", "float64", "s", "overhead", "weights, cache, inputs, prepare"),
    _c("warmup_wall_s", "float64", "s", "overhead", "warm-up calls"),
    _c("measure_overhead_s", "float64", "s", "overhead", "sampling time not inside a sample"),
    _c("telemetry_s", "float64", "s", "overhead", "telemetry window"),
    _c("peak_mem_s", "float64", "s", "overhead", "peak memory measurement"),
    _c("case_wall_s", "float64", "s", "overhead", "the whole case, wall clock"),
    _c("harness_overhead_s", "float64", "s", "overhead", "case_wall_s minus the timed samples", **_S),
    # Provenance: the run, job and settings a row came from.
    _c("run_root", "string", "", "provenance", "name of the run or sweep folder"),
    _c("job_dir", "string", "", "provenance", "the job's folder"),
    _c("job_num", "int64", "", "provenance", "Hydra job number in a sweep (null: single run)"),
    _c("launcher", "string", "", "provenance", "Hydra launcher (direct, basic, joblib, submitit...)"),
    _c("torch_threads", "int64", "threads", "provenance", "torch intra-op threads"),
    _c("ceiling_copy_gbps", "float64", "GB/s (1e9 bytes/s)", "provenance", "calibrated copy bandwidth"),
    _c("ceiling_read_gbps", "float64", "GB/s (1e9 bytes/s)", "provenance", "calibrated read-stream bandwidth"),
    _c("ceiling_matmul_tflops", "float64", "TFLOP/s (1e12 FLOP/s)", "provenance", "calibrated matmul rate"),
    _c("ceiling_quiet", "bool", "", "provenance", "the calibration was stable on a quiet machine (only those "
       "are cached)"),
    _c("ceiling_measured_at", "timestamp", "UTC", "provenance", "when the ceilings were measured"),
    _c("finished_at", "timestamp", "UTC", "provenance", "when the case finished"),
    _c("repro", "string", "", "provenance", "the attnbench command line that measures this case again (its "
       "settings and the job's measure settings; harness.sweep.repro)"),
    # Environment (harness.measure.env.ENV_COLUMNS).
    _c("env_device_name", "string", "", "env", "GPU or CPU model name"),
    _c("env_device_index", "int64", "", "env", "CUDA device index (null on CPU)"),
    _c("env_driver", "string", "", "env", "NVIDIA driver (null on CPU)"),
    _c("env_cuda", "string", "", "env", "CUDA version torch was built with"),
    _c("env_torch", "string", "", "env", "torch version"),
    _c("env_attnbench", "string", "", "env", "attnbench version"),
    _c("env_git_commit", "string", "", "env", "git commit of the checkout, -dirty if changed"),
    _c("env_host", "string", "", "env", "host name"),
    _c("env_cpu", "string", "", "env", "CPU model"),
    _c("env_cpu_count", "int64", "CPUs", "env", "CPUs this process may run on"),
    _c("env_python", "string", "", "env", "Python version"),
    _c("env_time_utc", "timestamp", "UTC", "env", "when the job started"),
)

BY_NAME: dict[str, Column] = {c.name: c for c in COLUMNS}
NAMES: tuple[str, ...] = tuple(BY_NAME)
IDENTITY: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.identity)
MEASURED: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.measured)
SUMMARY: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.summary)
SHAPE: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.group == "shape")
# What fixes a case apart from its shape: the identity columns of the case and timing groups.
CASE: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.identity and c.group in ("case", "timing"))
# Each column's unit also travels in its Arrow field's metadata ({"unit": "ms"}), for readers that
# show or convert units (pyarrow, and what reads the file's Arrow schema).
ARROW_SCHEMA: pa.Schema = pa.schema([pa.field(c.name, c.arrow_type, nullable=True,
                                              metadata={"unit": c.unit} if c.unit else None) for c in COLUMNS])

assert len(BY_NAME) == len(COLUMNS), "a column is declared twice"


def group(name: Group) -> tuple[str, ...]:
    return tuple(c.name for c in COLUMNS if c.group == name)


def markdown() -> str:
    """The schema as the markdown page ``docs/results-schema.md``."""
    lines = ["# Results schema", "",
             "Generated from `harness/results/schema.py` by `python -m attnbench.harness.results.schema`; "
             "do not edit by hand.",
             "", *__doc__.strip().split("\n\n")[2:], "",
             "**Identity** marks the columns hashed into `case_id` (shape columns only where the variant uses "
             "them; `decode_len` only for decode). **Nulled** marks the measured figures that are empty unless "
             "`status` is `ok`. Rows written before this schema are conformed on load: `host` and "
             "`device_index` become `env_host` and `env_device_index`, a float `finished_at` (Unix seconds) a "
             "UTC timestamp, as do `env_time_utc` and `ceiling_measured_at` stored as ISO text, and `timer`/`cuda_graph` become `timing` and `l2_flush`; rows written before the trust "
             "columns (`flags` to `remeasured`) hold nulls there.", "",
             "| column | type | unit | group | identity | nulled | meaning |",
             "|---|---|---|---|---|---|---|"]
    for c in COLUMNS:
        lines.append(f"| `{c.name}` | `{c.kind}` | {c.unit} | {c.group} | {'yes' if c.identity else ''} | "
                     f"{'yes' if c.measured else ''} | {c.meaning} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    sys.stdout.write(markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
