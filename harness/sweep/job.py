"""One job: plan its cases, measure each, write each row the moment it is finished.

``run_job`` is the plain function ``run.py``'s Hydra entry point wraps; tests call it directly.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml

from harness import results
from harness.measure.calibrate import Ceilings, ceilings
from harness.measure.case import Case
from harness.measure.env import environment
from harness.errors import UserError
from harness.measure.memory import total_memory_bytes
from harness.sweep.plan import plan_cases
from harness.sweep.progress import Progress, summary_table
from harness.measure.runner import RunContext, run_case
from harness.measure.telemetry import EMPTY_COLUMNS, telemetry_for
from harness.measure.timer import MeasureSettings
from variants.registry import VARIANTS

_SETTINGS_KEYS = ("warmup_reps", "warmup_s", "min_reps", "max_reps", "target_ci_rel", "budget_s", "confidence")


def measure_settings(measure: Mapping[str, Any]) -> MeasureSettings:
    try:
        return MeasureSettings(**{k: measure[k] for k in _SETTINGS_KEYS if k in measure})
    except ValueError as error:
        raise UserError(f"measure: {error}") from None


def _context(cfg: Mapping[str, Any], cases: list[Case], job_columns: dict[str, Any],
             log: Any) -> RunContext:
    measure = cfg["measure"]
    device = torch.device(cases[0].device)
    ceiling = recalibrate = None
    if measure.get("calibrate", True):
        cache_dir = Path(str(cfg.get("calibration_dir", "~/.cache/attnbench"))).expanduser()
        ceiling = ceilings(device, cases[0].torch_dtype, force=bool(measure.get("recalibrate", False)),
                           cache_dir=cache_dir)
        print(f"device ceilings: copy {ceiling.copy_gbps:.1f} GB/s, read {ceiling.read_gbps:.1f} GB/s, "
              f"matmul {ceiling.matmul_tflops:.3f} TFLOP/s ({ceiling.dtype}"
              f"{'' if ceiling.quiet else ', measured on a busy machine: not cached'})", file=log)

        def recalibrate() -> Ceilings:  # a row beat the ceilings: measure again, bypassing the cache
            return ceilings(device, cases[0].torch_dtype, force=True, cache_dir=cache_dir)
    sampler, why_not = telemetry_for(device)
    if why_not is not None:
        print(f"telemetry: NVML columns left empty ({why_not})", file=log)
    return RunContext(settings=measure_settings(measure), ceilings=ceiling, telemetry=sampler if why_not is None
                      else None, telemetry_columns=EMPTY_COLUMNS, check_numerics=bool(measure["check_numerics"]),
                      max_step_s=float(measure["max_step_s"]), memory_headroom=float(measure["memory_headroom"]),
                      cuda_graph=bool(measure["cuda_graph"]), l2_flush=bool(measure["l2_flush"]),
                      telemetry_window_s=float(measure.get("telemetry_window_s", 1.0)),
                      seed=int(cfg.get("seed", 0)), job_columns=job_columns, recalibrate=recalibrate)


def run_job(cfg: Mapping[str, Any], *, job_dir: Path, root: Path, job: Mapping[str, Any] | None = None,
            log: Any = sys.stdout) -> pd.DataFrame:
    """Measure every case of one job's config; returns its rows (also on disk under ``job_dir``)."""
    try:
        cases = plan_cases(cfg)
    except ValueError as error:
        raise UserError(str(error)) from None
    job_dir, root = Path(job_dir), Path(root)
    device = torch.device(cases[0].device)
    if cfg.get("threads") is not None:
        threads = int(cfg["threads"])
        if threads < 1:
            raise UserError(f"threads={threads} is not allowed: threads must be a positive integer or null")
        torch.set_num_threads(threads)
    env = environment(device)
    results.write_json(job_dir / "env.json", env)
    results.write_text(job_dir / "config.yaml", yaml.safe_dump(_plain(cfg), sort_keys=False))
    case_ids = [case.case_id(VARIANTS.get(case.variant).uses) for case in cases]
    # The job's plan, for `python -m harness.sweep.status`: a job that dies part-way leaves its cases listed.
    results.write_json(job_dir / results.PLAN, {
        "job_num": (job or {}).get("job_num"), "device": cases[0].device,
        "cases": [{"case_id": cid, "label": case.label()} for cid, case in zip(case_ids, cases, strict=True)]})
    job_columns = {"run_root": root.name, "job_dir": str(job_dir), "host": socket.gethostname(),
                   "device_mem_total_bytes": total_memory_bytes(device), "torch_threads": torch.get_num_threads(),
                   "device_index": device.index if device.type == "cuda" else None, "launcher": "direct",
                   "job_num": None, **(job or {}), **env}
    ctx = _context(cfg, cases, job_columns, log)
    done = results.finished_case_ids(root) if cfg.get("resume") else set()
    progress = Progress(len(cases), stream=log)
    rows = []
    for case, case_id in zip(cases, case_ids, strict=True):
        if case_id in done:
            progress.skip(case.label(), "already measured (resume)")
            continue
        row = run_case(case, ctx)
        results.write_row(job_dir, row)
        rows.append(row)
        progress.update(case.label(), row)
    print(summary_table(rows), file=log)
    return pd.DataFrame(rows)


def _plain(cfg: Mapping[str, Any]) -> Any:
    """A resolved config as plain Python data (OmegaConf containers or dicts)."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(cfg):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - hydra-core is a dependency
        pass
    return dict(cfg)
