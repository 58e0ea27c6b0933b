"""attnbench's command line.

    python run.py                                   # a small comparison on the best device present
    python run.py variant=mla seq=32k               # MLA at a 32k context, every implementation
    python run.py -m variant=mha,mqa,gqa,mla seq=1k,4k,32k batch=1,8 impl=eager,sdpa,absorbed
    python run.py -m experiment=context_scaling    # a paper-style study (conf/experiment/)

See README.md for every key; results land under results/<name>/.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from harness.sweep.overrides import check_overrides
from harness.errors import UserError
from harness.sweep.pinning import pinned_device, register_resolvers

CONF_DIR = Path(__file__).resolve().parent / "conf"


def run(cfg: DictConfig, *, job_dir: Path, root: Path, job: dict | None = None):  # noqa: ANN201
    """The plain function behind the command line (tests call it with a composed config)."""
    if cfg.task == "lowrank":
        from studies.lowrank.study import main as lowrank_main

        return lowrank_main(cfg, job_dir)
    from harness.sweep.job import run_job

    return run_job(cfg, job_dir=job_dir, root=root, job=job)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    job_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode.name == "MULTIRUN"
    root = Path(hc.sweep.dir) if multirun else job_dir
    job = {"job_num": hc.job.num if multirun else None, "launcher": _launcher_name(hc)}
    try:
        # device=auto/cuda: this job takes a free GPU of its machine and holds it while it runs.
        with pinned_device(str(cfg.device), lock_dir=cfg.get("gpu_lock_dir")) as device:
            cfg.device = device
            run(cfg, job_dir=job_dir, root=root, job=job)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def _launcher_name(hc) -> str:  # noqa: ANN001 - HydraConfig
    """``basic``, ``joblib``, ``submitit_local``, ``submitit_slurm``: the engine, whatever preset named it."""
    target = str(hc.launcher.get("_target_", "basic"))
    module, _, cls = target.rpartition(".")
    name = cls.removesuffix("Launcher").lower() or "basic"
    return f"submitit_{name}" if "submitit" in module else name


if __name__ == "__main__":
    try:
        check_overrides(sys.argv[1:], CONF_DIR)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    register_resolvers()
    main()
