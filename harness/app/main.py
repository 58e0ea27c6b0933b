"""``attnbench``: the Hydra app and the other commands, one entry point.

    attnbench [key=value ...]                      # one run (python run.py and python -m attnbench.harness: the same)
    attnbench -m variant=mha,mla seq=1k,32k        # a sweep; every job is checked before the first starts
    attnbench --config-dir my_conf model=mine      # a preset of your own, the Hydra way
    attnbench report|merge|status|nightly|lowrank|selfcheck ...   # the other commands (each with --help)

Keys: attnbench --help (every key with its comment: the installed attnbench.conf/config.yaml).
"""

from __future__ import annotations

import importlib
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from omegaconf import DictConfig

from attnbench.harness.errors import boundary

# Subcommand -> "module:function" taking argv (the module's own ``main(argv)``), imported when chosen.
SUBCOMMANDS = {
    "report": "attnbench.harness.report.__main__:main",
    "merge": "attnbench.harness.results.merge:main",
    "status": "attnbench.harness.sweep.status:main",
    "nightly": "attnbench.harness.nightly.cli:main",
    "lowrank": "attnbench.harness.studies.lowrank.__main__:cli",
    "selfcheck": "attnbench.harness.selfcheck.__main__:main",
    "export": "attnbench.harness.interop.flashinfer_trace.export:main", "import-trace": "attnbench.harness.interop.flashinfer_trace.load:main",
}


def run(cfg: DictConfig, *, job_dir: Path, root: Path, job: dict | None = None):  # noqa: ANN201
    """The plain function behind the command line (tests call it with a composed config)."""
    if cfg.task == "lowrank":
        from attnbench.harness.studies.lowrank.study import main as lowrank_main

        return lowrank_main(cfg, job_dir)
    from attnbench.harness.sweep.job import run_job

    return run_job(cfg, job_dir=job_dir, root=root, job=job)


def task(cfg: DictConfig) -> None:
    """Hydra's task function: one job."""
    from hydra.core.hydra_config import HydraConfig

    from attnbench.harness.sweep.pinning import pinned_device

    hc = HydraConfig.get()
    job_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode.name == "MULTIRUN"
    root = Path(hc.sweep.dir) if multirun else job_dir
    job = {"job_num": hc.job.num if multirun else None, "launcher": _launcher_name(hc)}
    # The job's boundary: a bug's traceback goes to the job log; Ctrl-C or a full disk names the resume.
    with boundary("run", log=lambda: _job_log(hc, job_dir), resume=lambda: resume_command(sys.argv[1:], cfg.name)):
        # device=auto/cuda: this job takes a free GPU of its machine and holds it while it runs.
        with pinned_device(str(cfg.device), lock_dir=cfg.get("gpu_lock_dir")) as device:
            cfg.device = device
            run(cfg, job_dir=job_dir, root=root, job=job)


def _job_log(hc, job_dir: Path) -> Path:  # noqa: ANN001 - HydraConfig
    """The job's log file (Hydra's file handler: <job dir>/<job name>.log)."""
    handler = (hc.job_logging.get("handlers") or {}).get("file") or {}
    return Path(str(handler.get("filename") or job_dir / f"{hc.job.name}.log"))


def resume_command(argv: Sequence[str], name: str) -> str:
    """The command line that resumes this run or sweep: the same arguments, its name, resume=true."""
    kept = [a for a in argv if not a.startswith(("name=", "resume=", "+name=", "++name=", "+resume=", "++resume="))]
    return shlex.join(["attnbench", *kept, f"name={name}", "resume=true"])


def _launcher_name(hc) -> str:  # noqa: ANN001 - HydraConfig
    """``basic``, ``joblib``, ``submitit_local``, ``submitit_slurm``: the engine, whatever preset named it."""
    target = str(hc.launcher.get("_target_", "basic"))
    module, _, cls = target.rpartition(".")
    name = cls.removesuffix("Launcher").lower() or "basic"
    return f"submitit_{name}" if "submitit" in module else name


def hydra_app(argv: Sequence[str]) -> None:
    """The Hydra app on ``argv`` (overrides and Hydra's flags), after the pre-check."""
    import hydra

    from attnbench.harness.sweep.schema import store_configs
    from attnbench.harness.sweep.claim import mark_sweep
    from attnbench.harness.sweep.overrides import check_overrides, config_path
    from attnbench.harness.sweep.pinning import register_resolvers

    check_overrides(argv)  # also fills the ConfigStore (schema, registered variants and impls)
    store_configs()
    register_resolvers()
    mark_sweep()  # the jobs it launches (in worker processes too) share the run folder's lock (harness.sweep.claim)
    app = hydra.main(version_base="1.3", config_path=config_path(), config_name="config")(task)
    saved = sys.argv
    sys.argv = [saved[0] if saved else "attnbench", *argv]  # hydra.main reads sys.argv; argv[0] names the program
    try:
        app()
    finally:
        sys.argv = saved


def _load(target: str) -> Callable[[list[str]], int | None]:
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: a subcommand, else the Hydra app."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in SUBCOMMANDS:
        return int(_load(SUBCOMMANDS[args[0]])(args[1:]) or 0)  # each main has its own boundary
    with boundary("run"):  # the pre-check and Hydra's start; each job has its own boundary (task)
        hydra_app(args)
    return 0
