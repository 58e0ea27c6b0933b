"""One job: plan its cases, measure each, write each row the moment it is finished.

``run_job`` is the plain function ``run.py``'s Hydra entry point wraps; tests call it directly.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import pandas as pd
import torch
import yaml

from harness import results
from harness.measure.calibrate import Ceilings, ceilings
from harness.measure.case import Case
from harness.measure.env import environment
from harness.errors import UserError
from harness.logs import echoed
from harness.results.paths import check_inside, check_run_name
from harness.measure.memory import total_memory_bytes
from harness.sweep.plan import plan_cases
from harness.sweep.progress import Progress, summary_table
from harness.measure.runner import RunContext, run_case
from harness.measure.telemetry import telemetry_for
from harness.measure.timer import MeasureSettings
from variants.registry import VARIANTS

_log = logging.getLogger(__name__)

_SETTINGS_KEYS = ("warmup_reps", "warmup_s", "min_reps", "max_reps", "target_ci_rel", "budget_s", "confidence")


def measure_settings(measure: Mapping[str, Any]) -> MeasureSettings:
    try:
        return MeasureSettings(**{k: measure[k] for k in _SETTINGS_KEYS if k in measure})
    except ValueError as error:
        raise UserError(f"measure: {error}") from None


def _context(cfg: Mapping[str, Any], cases: list[Case], job_columns: dict[str, Any]) -> RunContext:
    measure = cfg["measure"]
    device = torch.device(cases[0].device)
    ceiling = recalibrate = None
    if measure.get("calibrate", True):
        cache_dir = Path(str(cfg.get("calibration_dir", "~/.cache/attnbench"))).expanduser()
        ceiling = ceilings(device, cases[0].torch_dtype, force=bool(measure.get("recalibrate", False)),
                           cache_dir=cache_dir)
        _log.info("device ceilings: copy %.1f GB/s, read %.1f GB/s, matmul %.3f TFLOP/s (%s%s)", ceiling.copy_gbps,
                  ceiling.read_gbps, ceiling.matmul_tflops, ceiling.dtype,
                  "" if ceiling.quiet else ", measured on a busy machine: not cached")

        def recalibrate() -> Ceilings:  # a row beat the ceilings: measure again, bypassing the cache
            return ceilings(device, cases[0].torch_dtype, force=True, cache_dir=cache_dir)
    sampler, why_not = telemetry_for(device)
    if why_not is not None:
        _log.info("telemetry: NVML columns left empty (%s)", why_not)
    return RunContext(settings=measure_settings(measure), ceilings=ceiling, telemetry=sampler if why_not is None
                      else None, check_numerics=bool(measure["check_numerics"]),
                      max_step_s=float(measure["max_step_s"]), memory_headroom=float(measure["memory_headroom"]),
                      telemetry_window_s=float(measure.get("telemetry_window_s", 1.0)),
                      seed=int(cfg.get("seed", 0)), job_columns=job_columns, recalibrate=recalibrate)


def run_job(cfg: Mapping[str, Any], *, job_dir: Path, root: Path, job: Mapping[str, Any] | None = None,
            log: TextIO | None = None) -> pd.DataFrame:
    """Measure every case of one job's config; returns its rows (also on disk under ``job_dir``).

    Progress goes to this module's logger (Hydra's console and job log under ``run.py``); ``log``,
    a stream, also receives the lines (tests pass an ``io.StringIO``).
    """
    with echoed(log):
        return _run_job(cfg, job_dir=job_dir, root=root, job=job)


def _run_job(cfg: Mapping[str, Any], *, job_dir: Path, root: Path, job: Mapping[str, Any] | None) -> pd.DataFrame:
    try:
        cases = plan_cases(cfg)
    except ValueError as error:
        raise UserError(str(error)) from None
    job_dir, root = Path(job_dir), Path(root)
    # Nothing is written outside the run's folder: name= is one folder name (results/<name>), and the
    # job's folder lies under the run or sweep root.
    if cfg.get("name") is not None:
        check_run_name(str(cfg["name"]))
    check_inside(job_dir, root, what="job folder")
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
    # The host and the device index are env_host and env_device_index (in env).
    job_columns = {"run_root": root.name, "job_dir": str(job_dir),
                   "device_mem_total_bytes": total_memory_bytes(device), "torch_threads": torch.get_num_threads(),
                   "launcher": "direct", "job_num": None, **(job or {}), **env}
    ctx = _context(cfg, cases, job_columns)
    done = results.finished_case_ids(root) if cfg.get("resume") else set()
    _log.info("%d cases on %s; rows under %s", len(cases), device, job_dir / results.ROWS)
    progress = Progress(len(cases))
    ctx.stage = progress.stage  # the live status line follows the case's stages
    rows = []
    for case, case_id in zip(cases, case_ids, strict=True):
        if case_id in done:
            progress.skip(case.label(), "already measured (resume)")
            continue
        progress.start(case.label())
        row = run_case(case, ctx)
        results.write_row(job_dir, row)
        rows.append(row)
        progress.update(case.label(), row)
    _log.info("job summary (%d cases):\n%s", len(cases), summary_table(rows))
    return pd.DataFrame(rows)


def _plain(cfg: Mapping[str, Any]) -> Any:
    """A resolved config as plain Python data (OmegaConf containers or dicts)."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(cfg):
            return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)  # typed choices as text
    except ImportError:  # pragma: no cover - hydra-core is a dependency
        pass
    return dict(cfg)
