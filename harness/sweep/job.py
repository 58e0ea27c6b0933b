"""One job: plan its cases, measure each, write each row the moment it is finished.

``run_job`` is the plain function ``run.py``'s Hydra entry point wraps; tests call it directly.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, TextIO

import pandas as pd
import torch
import yaml

from attnbench.harness import results
from attnbench.harness.measure.calibrate import Ceilings, cache_dir_of, ceilings
from attnbench.harness.measure.case import Case
from attnbench.harness.measure.env import environment
from attnbench.harness.errors import UserError
from attnbench.harness.logs import echoed
from attnbench.harness.results.compact import compact
from attnbench.harness.results.layout import rows_dir
from attnbench.harness.results.paths import check_inside, check_run_name
from attnbench.harness.measure.memory import total_memory_bytes
from attnbench.harness.sweep.claim import claimed
from attnbench.harness.sweep.plan import plan_cases
from attnbench.harness.sweep.progress import Progress, summary_table
from attnbench.harness.sweep.repro import command, job_overrides
from attnbench.harness.measure import trust
from attnbench.harness.measure.runner import RunContext, run_case
from attnbench.harness.measure.telemetry import telemetry_for
from attnbench.harness.measure.timer import MeasureSettings
from attnbench.variants.registry import VARIANTS
from attnbench.harness.text.units import ci_text

_log = logging.getLogger(__name__)

CONFIG = "config.yaml"  # per job: the resolved config its rows were measured with; written once, never replaced
# Keys that do not change what a row measures: a resume may differ in these from the stored config.
# name: the folder is the run's (hydra.sweep.dir may name it while name= keeps its time-stamp default).
RESUME_FREE = ("resume", "name", "gpu_lock_dir", "calibration_dir", "measure.recalibrate")
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
        cache_dir = cache_dir_of(str(cfg.get("calibration_dir", "~/.cache/attnbench")))  # HOME='': not /.cache
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
    with echoed(log), _warnings_logged(), ExitStack() as hold:
        return _run_job(cfg, job_dir=job_dir, root=root, job=job, hold=hold)


@contextmanager
def _warnings_logged() -> Iterator[None]:
    """Python's and torch's warnings outside a case (planning, calibration) go to the job log through
    the ``py.warnings`` logger, not to stderr only; a case catches its own (harness.measure.trust)."""
    with warnings.catch_warnings():  # restores warnings.showwarning afterwards
        logging.captureWarnings(True)
        try:
            yield
        finally:
            logging.captureWarnings(False)


def _plan(cfg: Mapping[str, Any]) -> list[Case]:
    """The job's cases; each variant ``all`` leaves out is named in the log, with why."""
    left_out: dict[str, str] = {}
    try:
        cases = plan_cases(cfg, left_out=left_out)
    except ValueError as error:
        raise UserError(str(error)) from None
    for variant, reason in left_out.items():
        _log.info("variant=all leaves out %s: %s", variant, reason)
    return cases


def _run_job(cfg: Mapping[str, Any], *, job_dir: Path, root: Path, job: Mapping[str, Any] | None,
             hold: ExitStack) -> pd.DataFrame:
    cases = _plan(cfg)
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
    # One sweep at a time under a name, held until the job ends: taken once the settings are checked,
    # before anything under the folder is read or written.
    hold.enter_context(claimed(root, launcher=str((job or {}).get("launcher", "direct"))))
    write_config(job_dir / CONFIG, _plain(cfg), resume=bool(cfg.get("resume")))
    env = environment(device)
    results.write_json(job_dir / "env.json", env)
    case_ids = [case.case_id(VARIANTS.get(case.variant).uses) for case in cases]
    # The job's plan, for `python -m attnbench.harness.sweep.status`: a job that dies part-way leaves its cases listed.
    results.write_json(job_dir / results.PLAN, {
        "job_num": (job or {}).get("job_num"), "device": cases[0].device,
        "cases": [{"case_id": cid, "label": case.label()} for cid, case in zip(case_ids, cases, strict=True)]})
    # The host and the device index are env_host and env_device_index (in env).
    job_columns = {"run_root": root.name, "job_dir": str(job_dir),
                   "device_mem_total_bytes": total_memory_bytes(device), "torch_threads": torch.get_num_threads(),
                   "launcher": "direct", "job_num": None, **(job or {}), **env}
    ctx = _context(cfg, cases, job_columns)
    done = results.finished_case_ids(root) if cfg.get("resume") else set()
    rows_folder = rows_dir(job_dir, root)  # apart from the job's logs and configs: plain readers open it
    shared = job_overrides(cfg)
    _log.info("%d cases on %s; rows under %s", len(cases), device, rows_folder)
    progress = Progress(len(cases))
    measured: list[tuple[Case, dict[str, Any], Path]] = []
    ctx.stage = progress.stage  # the live status line follows the case's stages
    for case, case_id in zip(cases, case_ids, strict=True):
        if case_id in done:
            progress.skip(case.label(), "already measured (resume)")
            continue
        progress.start(case.label())
        row = {**run_case(case, ctx), "repro": command(case, shared)}
        measured.append((case, row, results.write_row(job_dir, row, root=root)))
        progress.update(case.label(), row)
    measured = remeasure_noisy(measured, ctx, job_dir=job_dir, root=root)
    compact(rows_folder)  # every case finished: one file for the job's rows (crash safety no longer needs one each)
    rows = [row for _, row, _ in measured]
    _log.info("job summary (%d cases):\n%s", len(cases), summary_table(rows))
    if rows:
        _log.info("repro commands (one per case):\n%s", "\n".join(f"  {row['repro']}" for row in rows))
    flagged = trust.count_line(row.get("flags") for row in rows)
    if flagged:
        _log.warning("%s See the flags column (harness.measure.trust).", flagged)
    return pd.DataFrame(rows)


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"measure.warmup_reps": 7, ...}``: a nested config as dotted keys."""
    if not isinstance(tree, Mapping):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flat(value, f"{prefix}{key}."))
    return {k.removesuffix("."): v for k, v in flat.items()}


def write_config(path: Path, config: Mapping[str, Any], *, resume: bool) -> None:
    """Store the job's config at ``path`` unless one is stored there already: that one describes
    the rows measured with it, so it is never replaced (``check_same_config``)."""
    if not check_same_config(path, config, resume=resume):
        results.write_text(path, yaml.safe_dump(dict(config), sort_keys=False))


def check_same_config(path: Path, config: Mapping[str, Any], *, resume: bool) -> bool:
    """Whether a config is stored at ``path`` already; ``UserError`` naming every key that changed
    (old and new value), apart from ``RESUME_FREE``: rows measured two ways would share one folder
    and one config (and nightly fingerprints a run by its config)."""
    if not path.exists():
        return False
    try:
        stored = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not a readable config ({type(error).__name__}); move it away, or use a new "
                        "name=") from None
    old, new = _flat(stored if isinstance(stored, Mapping) else {}), _flat(config)
    changed = [k for k in sorted(set(old) | set(new)) if k not in RESUME_FREE
               and _compared(k, old.get(k, "<absent>")) != _compared(k, new.get(k, "<absent>"))]
    if changed:
        shown = ", ".join(f"{k} {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}" for k in changed)
        what = "resume" if resume else "a new run under the same name"
        raise UserError(f"{path.parent} was measured with another configuration ({shown}); {what} would mix "
                        "rows measured two ways: repeat the original settings, or choose a new name=")
    return True


def _compared(key: str, value: Any) -> Any:
    """A config value as the resume check compares it: which GPU of a machine a job was pinned to
    (``cuda:1`` for ``device=auto``, harness.sweep.pinning) is the pinning's choice, not a setting."""
    if key == "device" and isinstance(value, str) and value.startswith("cuda:"):
        return "cuda"
    return value


def remeasure_noisy(measured: list[tuple[Case, dict[str, Any], Path]], ctx: RunContext, *,
                    job_dir: Path, root: Path | None = None) -> list[tuple[Case, dict[str, Any], Path]]:
    """Measure each ``noisy`` case once more, after every case of the job ran (a passing burst of
    load rarely lasts that long), and keep the measurement with the tighter CI, marked ``remeasured``.

    Nothing measured is lost on the way: the replacement row is written (atomically, a new file)
    before the first row's file is removed, so a job killed in between leaves both complete rows.
    """
    noisy = [i for i, (_, row, _) in enumerate(measured) if "noisy" in trust.parse(row.get("flags"))]
    if not noisy:
        return measured
    _log.info("measuring %d noisy case(s) again", len(noisy))
    out = list(measured)
    for i in noisy:
        case, first, path = measured[i]
        again = {**run_case(case, ctx), "repro": first.get("repro")}
        better = again if again["status"] == "ok" and _ci_rel(again) < _ci_rel(first) else first
        kept = dict(better, remeasured=True)
        _log.info("%s: measured again: %s then %s; kept the %s%s", case.label(), ci_text(_ci_rel(first)),
                  ci_text(_ci_rel(again)) if again["status"] == "ok" else f"{again['status']}",
                  "second" if better is again else "first",
                  f", still {kept['flags']}" if kept["flags"] else "")
        replacement = results.write_row(job_dir, kept, root=root)
        os.unlink(path)  # only now: its replacement (the same numbers, or better ones) is on disk
        out[i] = (case, kept, replacement)
    return out


def _ci_rel(row: Mapping[str, Any]) -> float:
    value = row.get("latency_ci_rel")
    return float("inf") if value is None or value != value else float(value)  # NaN: no CI


def _plain(cfg: Mapping[str, Any]) -> Any:
    """A resolved config as plain Python data (OmegaConf containers or dicts)."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(cfg):
            return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)  # typed choices as text
    except ImportError:  # pragma: no cover - hydra-core is a dependency
        pass
    return dict(cfg)
