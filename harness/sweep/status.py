"""What a sweep planned against what it measured: which cases are ok, failed, or missing.

    python -m attnbench.harness.sweep.status results/<name> [more sweeps or runs]

A case is *missing* when no row exists for it: its job has not run yet, is still running, or died
(killed, node lost, time limit). A died job's in-flight case has no row, only perhaps a ``.tmp``
leftover, so it is never counted as a result. The plan comes from the jobs themselves (each writes
``plan.json`` before measuring) and, for jobs that never started, from re-composing their config:
the sweep's ``multirun.yaml`` holds the command line and the sweeper's params, from which Hydra's
basic sweeper gives every job's overrides again. The last line is the command that resumes the
sweep: the same one with ``resume=true``, which re-runs exactly the cases without an ``ok`` row.

A row file that cannot be read is named (with the fix: delete it and resume) and its case counts as
missing, as resume treats it. A ``plan.json``, ``overrides.yaml`` or ``multirun.yaml`` that cannot
be read is one line naming it, exit status 2.

Exit status: 0 when every planned case has a row, 1 when some are missing, 2 for bad input.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from attnbench.harness import results
from attnbench.harness.errors import ArgumentParser, UserError, guarded
from attnbench.harness.sweep.overrides import BASIC_SWEEPER, compose_job, config_path, sweep_overrides

DETAILED = ("missing", "error", "oom", "incorrect")  # listed case by case; other statuses are counted


@dataclass(frozen=True)
class PlannedJob:
    num: int | None  # None: a single run
    overrides: tuple[str, ...]
    cases: tuple[tuple[str, str], ...] | None  # (case_id, label); None: could not be planned here
    started: bool  # wrote its plan.json
    note: str = ""


@dataclass(frozen=True)
class CaseState:
    case_id: str
    label: str
    job: int | None
    status: str  # a row status, or "missing"
    reason: str = ""


@dataclass
class SweepStatus:
    root: Path
    jobs: list[PlannedJob]
    cases: list[CaseState]
    unplanned_ok: int = 0  # ok rows of cases this plan doesn't hold (an earlier sweep under the same name)
    leftovers: list[Path] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # one message per unreadable row file
    resume_command: str | None = None

    @property
    def missing(self) -> list[CaseState]:
        return [c for c in self.cases if c.status == "missing"]

    @property
    def unplanned_jobs(self) -> list[PlannedJob]:
        return [j for j in self.jobs if j.cases is None]

    @property
    def complete(self) -> bool:
        return not self.missing and not self.unplanned_jobs

    def counts(self) -> Counter:
        return Counter(c.status for c in self.cases)

    def lines(self) -> list[str]:
        counts = self.counts()
        order = ["ok", *sorted(s for s in counts if s not in ("ok", "missing")), "missing"]
        summary = ", ".join(f"{counts[s]} {s}" for s in order if counts[s])
        jobs = f"{len(self.jobs)} job{'s' * (len(self.jobs) != 1)}"
        out = [f"{self.root}: {jobs}, {len(self.cases)} cases planned: {summary or 'none'}"
               + (" (missing: no row yet; the job has not run, is running, or died)" if self.missing else "")]
        swept = _swept_keys(self.jobs)
        for job in self.jobs:
            which = " ".join(o for o in job.overrides if o.split("=", 1)[0] in swept)
            name = f"job {job.num}" + (f" ({which})" if which else "")
            if job.cases is None:
                out.append(f"  missing    {name}: cases unknown ({job.note})")
                continue
            states = [c for c in self.cases if c.job == job.num]
            missing = [c for c in states if c.status == "missing"]
            if missing and len(missing) == len(states):  # the whole job: one line
                how = "never started" if not job.started else "started, no case finished"
                what = f"all {len(states)} cases" if len(states) > 1 else "its one case"
                out.append(f"  missing    {name}: {what} ({how})")
                states = [c for c in states if c.status != "missing"]
            for case in states:
                if case.status in DETAILED:
                    why = f"  {case.reason}" if case.reason else ""
                    out.append(f"  {case.status:<10} {name}: {case.label}  [{case.case_id}]{why}")
        notes = sorted({j.note for j in self.jobs if j.note and j.cases is not None})
        out.extend(f"  note: {note}" for note in notes)
        if self.unplanned_ok:
            out.append(f"  {self.unplanned_ok} ok rows belong to cases outside this plan (an earlier sweep here)")
        if self.leftovers:
            shown = ", ".join(str(p) for p in self.leftovers[:3])
            out.append(f"  {len(self.leftovers)} partial files from killed writes (not results): {shown}"
                       + (" ..." if len(self.leftovers) > 3 else ""))
        out.extend(f"  warning: {message}" for message in self.unreadable)
        if self.resume_command and not self.complete:
            out.append(f"resume: {self.resume_command}")
        return out



def _swept_keys(jobs: list[PlannedJob]) -> set[str]:
    """The override keys whose value differs between jobs: what tells one job from another."""
    values: dict[str, list[str]] = {}
    for job in jobs:
        for override in job.overrides:
            key, _, value = override.partition("=")
            values.setdefault(key, []).append(value)
    return {k for k, v in values.items() if len(set(v)) > 1 or len(v) < len(jobs)}


def _conf_dir(multirun: dict | None) -> str:
    """The sweep's primary config source (a folder, or pkg://attnbench.conf), else this install's."""
    for source in ((multirun or {}).get("hydra", {}).get("runtime", {}).get("config_sources") or []):
        if source.get("provider") == "main" and source.get("schema") == "file" and Path(source["path"]).is_dir():
            return str(source["path"])
    return config_path()


def _config_dirs(multirun: dict | None) -> list[str]:
    """The sweep's ``--config-dir`` folders (Hydra records them as command-line config sources)."""
    sources = (multirun or {}).get("hydra", {}).get("runtime", {}).get("config_sources") or []
    return [str(s["path"]) for s in sources if s.get("provider") == "command-line" and s.get("schema") == "file"]


def _plan_here(overrides: list[str], conf_dir: str,
               config_dir: str | None = None) -> tuple[tuple[tuple[str, str], ...] | None, str]:
    """Compose a job's config and plan it on this machine; (cases, note) or (None, why not)."""
    from attnbench.harness.sweep.schema import store_configs
    from attnbench.harness.sweep.plan import plan_cases
    from attnbench.variants.registry import VARIANTS

    try:
        store_configs()
        cfg = compose_job(conf_dir, list(overrides), config_dir=config_dir)
        cases = plan_cases(cfg)
    except Exception as error:  # noqa: BLE001 - any reason it can't be planned here is reported, not raised
        return None, f"cannot plan it here: {str(error).strip().splitlines()[0] if str(error).strip() else error!r}"
    planned = tuple((c.case_id(VARIANTS.get(c.variant).uses), c.label()) for c in cases)
    return planned, (f"jobs without a {results.PLAN} (never started, or older than it) are planned on this "
                     f"machine ({cases[0].device})")


def _unreadable(path: Path, why: object) -> UserError:
    text = str(why).strip().splitlines()[0][:200] if str(why).strip() else type(why).__name__
    return UserError(f"cannot read {path} ({text}); it is not what the sweep wrote: restore it, or delete the "
                     "folder's results and run the sweep again")


def _read_plan(path: Path) -> dict:
    try:
        plan = json.loads(path.read_text())
        cases = plan["cases"]
        if not isinstance(plan.get("job_num"), (int, type(None))) or not all(
                isinstance(c["case_id"], str) and isinstance(c["label"], str) for c in cases):
            raise ValueError("unexpected types in it")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise _unreadable(path, error) from None
    return plan


def _read_yaml(path: Path, kind: type) -> object:
    try:
        value = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise _unreadable(path, error) from None
    if not isinstance(value, kind) and value is not None:
        raise _unreadable(path, f"a {type(value).__name__}, not a {kind.__name__}")
    return value


def _job_dirs(root: Path) -> dict[int | None, tuple[Path, dict]]:
    """Job folders that wrote a plan, by job number."""
    found: dict[int | None, tuple[Path, dict]] = {}
    for path in sorted(root.glob(f"*/{results.PLAN}")) + sorted(root.glob(results.PLAN)):
        plan = _read_plan(path)
        found[plan.get("job_num")] = (path.parent, plan)
    return found


def _job_overrides(job_dir: Path) -> list[str] | None:
    path = job_dir / ".hydra" / "overrides.yaml"
    return [str(o) for o in _read_yaml(path, list) or []] if path.exists() else None


def _read_multirun(path: Path) -> dict:
    multirun = _read_yaml(path, dict) or {}
    try:
        hydra_cfg = multirun["hydra"]
        hydra_cfg["sweeper"].get("_target_")
        task, hydra_args = hydra_cfg["overrides"]["task"], hydra_cfg["overrides"]["hydra"]
        if not isinstance(task, list) or not isinstance(hydra_args, list):
            raise TypeError("overrides are not lists")
    except (KeyError, TypeError, AttributeError) as error:
        raise _unreadable(path, f"not a Hydra multirun.yaml: {error!r}") from None
    return multirun


def _cases_of(plan: dict) -> tuple[tuple[str, str], ...]:
    return tuple((c["case_id"], c["label"]) for c in plan["cases"])


def planned_jobs(root: Path) -> tuple[list[PlannedJob], dict | None]:
    root = Path(root)
    multirun_path = root / "multirun.yaml"
    started = _job_dirs(root)
    if not multirun_path.exists():  # a single run, or a job folder of a sweep
        if None in started or len(started) == 1:
            job_dir, plan = started.get(None) or next(iter(started.values()))
            return [PlannedJob(num=plan.get("job_num"), overrides=tuple(_job_overrides(job_dir) or ()),
                               cases=_cases_of(plan), started=True)], None
        raise UserError(f"{root} is neither a sweep (no multirun.yaml) nor a run (no {results.PLAN})")
    multirun = _read_multirun(multirun_path)
    sweeper = multirun["hydra"]["sweeper"].get("_target_")
    if sweeper != BASIC_SWEEPER:  # other sweepers choose jobs as they go: only what started is known
        return [PlannedJob(num=num, overrides=tuple(_job_overrides(d) or ()), cases=_cases_of(plan), started=True,
                           note=f"sweeper {sweeper}: jobs that never started cannot be listed")
                for num, (d, plan) in sorted(started.items(), key=lambda item: item[0] or 0)], multirun
    conf_dir = _conf_dir(multirun)
    try:
        every_job = sweep_overrides(multirun)
    except Exception as error:  # noqa: BLE001 - Hydra's parser raises several kinds; all mean a bad file
        raise _unreadable(multirun_path, f"its overrides do not parse: {error}") from None
    jobs = []
    for num, overrides in enumerate(every_job):
        job_dir, plan = started.get(num, (None, None))
        if plan is not None and sorted(_job_overrides(job_dir) or overrides) == sorted(overrides):
            jobs.append(PlannedJob(num=num, overrides=tuple(overrides), cases=_cases_of(plan), started=True))
        else:  # never started (or the folder holds an earlier sweep's job under the same name)
            cases, note = _plan_here(overrides, conf_dir, next(iter(_config_dirs(multirun)), None))
            jobs.append(PlannedJob(num=num, overrides=tuple(overrides), cases=cases, started=False, note=note))
    return jobs, multirun


def resume_command(root: Path, multirun: dict | None) -> str | None:
    """The sweep's own command line with ``resume=true``."""
    if multirun is None:
        return None
    overrides = multirun["hydra"]["overrides"]
    task = [o for o in overrides["task"] if not o.startswith("resume=")]
    hydra_args = [o for o in overrides["hydra"] if not o.startswith("hydra.mode=")]
    if not any(o.startswith("name=") for o in task) and not any(o.startswith("hydra.sweep.dir=") for o in hydra_args):
        task.append(f"name={Path(root).name}")  # the default name is a time stamp: name the folder
    # The sweep's own presets (model=mine from --config-dir) must be found again when it resumes.
    config_dirs = [arg for path in _config_dirs(multirun) for arg in ("--config-dir", path)]
    # python -m attnbench.harness: the attnbench command wherever attnbench is installed (editable or not).
    return shlex.join(["python", "-m", "attnbench.harness", *config_dirs, "-m", *task, *hydra_args, "resume=true"])


def status(root: Path) -> SweepStatus:
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"no sweep or run at {root}")
    files = results.row_files([root])  # first: a link inside the folder is refused by name, as every reader does
    jobs, multirun = planned_jobs(root)
    rows, unreadable = results.read_readable(files)
    ok = set(rows.loc[rows["status"] == "ok", "case_id"])
    latest = rows.sort_values("finished_at").drop_duplicates("case_id", keep="last").set_index("case_id")
    cases, planned = [], set()
    for job in jobs:
        for case_id, label in job.cases or ():
            planned.add(case_id)
            if case_id in ok:
                cases.append(CaseState(case_id, label, job.num, "ok"))
            elif case_id in latest.index:
                row = latest.loc[case_id]
                cases.append(CaseState(case_id, label, job.num, str(row["status"]), str(row["reason"] or "")))
            else:
                cases.append(CaseState(case_id, label, job.num, "missing"))
    leftovers = sorted(p for p in root.rglob(".*.tmp") if results.ROWS in p.relative_to(root).parent.parts)
    return SweepStatus(root=root, jobs=jobs, cases=cases, unplanned_ok=len(ok - planned), leftovers=leftovers,
                       unreadable=[str(error) for error in unreadable], resume_command=resume_command(root, multirun))


@guarded("status")
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="attnbench status", description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="+", type=Path, metavar="SWEEP_OR_RUN_DIR")
    args = parser.parse_args(argv)
    complete = True
    for root in args.roots:  # a bad folder or file: one line from the boundary (harness.errors)
        report = status(root)
        print("\n".join(report.lines()))
        complete &= report.complete
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
