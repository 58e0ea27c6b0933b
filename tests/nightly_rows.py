"""Result rows for the nightly tests: the columns ``attnbench.harness.nightly`` reads, with chosen samples.

``write_run`` lays them out as ``run.py`` does (``rows/*.parquet`` beside ``config.yaml``), so
ingest reads them through ``attnbench.harness.results`` like any run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from attnbench.harness import results
from attnbench.harness.measure.stats import summarize

ENV: dict[str, Any] = {
    "env_device_name": "Test CPU", "env_device_index": None, "env_driver": None, "env_cuda": None,
    "env_torch": "2.13.0+cpu", "env_attnbench": "0.1.0", "env_git_commit": None, "env_host": "runner-1",
    "env_cpu": "Test CPU", "env_cpu_count": 2, "env_python": "3.11.9", "env_time_utc": "2026-01-01T00:00:00+00:00",
}
MEASURE = {"warmup_reps": 3, "warmup_s": 0.2, "min_reps": 5, "max_reps": 10000, "target_ci_rel": 0.01,
           "budget_s": 5.0, "confidence": 0.95, "cuda_graph": False, "l2_flush": False}
CASES: dict[str, dict[str, Any]] = {
    "mla-absorbed": {"variant": "mla", "impl": "absorbed", "phase": "decode", "seq": 4096},
    "mla-eager": {"variant": "mla", "impl": "eager", "phase": "decode", "seq": 4096},
    "gqa-sdpa": {"variant": "gqa", "impl": "sdpa", "phase": "prefill", "seq": 1024},
}
FIGURES = {"flops": 1_000_000, "bytes_min": 500_000, "kv_bytes_per_token": 1152, "kv_cache_bytes": 4_719_744,
           "peak_mem_bytes": 9_000_000}


def lognormal_samples(median_ms: float, *, n: int = 400, sigma: float = 0.03, seed: int = 0) -> list[float]:
    """Latencies around ``median_ms`` with a ``sigma`` log spread and a few one-sided outliers, as a
    shared machine gives."""
    rng = np.random.default_rng(seed)
    xs = median_ms * rng.lognormal(0.0, sigma, size=n)
    outliers = rng.random(n) < 0.03
    xs[outliers] *= rng.uniform(1.5, 4.0, size=int(outliers.sum()))
    return xs.tolist()


def case_id(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:16]


def row(name: str, samples_ms: Sequence[float] | None, *, status: str = "ok", reason: str = "",
        figures: dict[str, int] | None = None, **columns: Any) -> dict[str, Any]:
    """One case's row; ``samples_ms=None`` for a case that did not run."""
    case = CASES[name]
    out: dict[str, Any] = {"case_id": case_id(name), "status": status, "reason": reason, "compile": "none",
                           "model": "deepseek_v2_lite", "batch": 1, "decode_len": 1, "dtype": "float32",
                           "attention": "self", "device": "cpu", "torch_threads": 1, **case,
                           **(FIGURES if figures is None else figures)}
    if samples_ms is not None:
        out.update(summarize(samples_ms), samples_ms=list(samples_ms))
    out.update(columns)
    return out


def write_run(root: Path, rows: Sequence[dict[str, Any]], *, time_utc: str = ENV["env_time_utc"],
              env: dict[str, Any] | None = None, measure: dict[str, Any] | None = None, job: str = "") -> Path:
    """Write ``rows`` as one job of a run rooted at ``root`` (``job``: a sweep's job folder)."""
    job_dir = Path(root) / job if job else Path(root)
    for i, one in enumerate(rows):
        results.write_row(job_dir, {**ENV, "env_time_utc": time_utc, **(env or {}), "run_root": Path(root).name,
                                    "job_dir": str(job_dir), "finished_at": 1.0 + i, **one})
    results.write_text(job_dir / "config.yaml", yaml.safe_dump({"measure": {**MEASURE, **(measure or {})}}))
    return Path(root)
