"""The harness from Python: compose a config, run a job, get its rows (``docs/python-api.md``).

    from attnbench import harness
    cfg = harness.config("variant=mla", "seq=1k", "model=tiny", "device=cpu")
    rows = harness.run(cfg, out="results/notebook")   # a DataFrame, one row per case
    rows[["variant", "impl", "phase", "status", "latency_ms", "latency_ci_rel"]]

``run`` is what ``python run.py ...`` does for one job, without Hydra's command line: same plan,
same measurement, same row files under ``out``. The overrides are the command line's.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from os import PathLike
from pathlib import Path
from typing import Any

import pandas as pd
from hydra import compose, initialize_config_dir, initialize_config_module
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from attnbench.harness.errors import UserError
from attnbench.harness.results.paths import check_out_dir
from attnbench.harness.sweep.overrides import check_added_keys, check_group_lists, condense
from attnbench.harness.logs import LevelName, shown



def _config_source() -> AbstractContextManager[Any]:
    """Where the configs live: the same tree the command line composes (a checkout's ``conf/`` or the
    installed ``attnbench.conf``), with the typed schema and the registries' options stored first."""
    from attnbench.harness.sweep.schema import store_configs
    from attnbench.harness.sweep.overrides import config_path

    store_configs()
    path = config_path()
    if path.startswith("pkg://"):
        return initialize_config_module(config_module=path.removeprefix("pkg://"), version_base="1.3")
    return initialize_config_dir(config_dir=path, version_base="1.3")


def config(*overrides: str, config_name: str = "config") -> DictConfig:
    """The config ``python run.py <overrides>`` would run, composed with Hydra's compose API.

    ``attnbench.harness.config("variant=mla", "seq=1k", "model=tiny")``; a bad group option, key or value
    is a one-line ``UserError`` naming it. Values checked only when planned (``seq=abc``) fail in
    ``run``, as on the command line.
    """
    for override in overrides:
        if not isinstance(override, str):
            raise UserError(f"override {override!r} is not allowed: pass strings such as 'seq=1k'")
    if not isinstance(config_name, str) or not config_name.strip():
        raise UserError(f"config_name={config_name!r} is not allowed: the name of a config in conf/ (default: config)")
    check_group_lists(overrides)
    check_added_keys(overrides)  # "+seqq=1" is an unknown key here as on the command line, not a new one
    try:
        with _config_source():
            return compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as error:
        raise UserError(condense(error)) from None


def run(cfg: DictConfig | Mapping[str, Any], *, out: str | Path, log_level: LevelName | None = "INFO") -> pd.DataFrame:
    """Run the job ``cfg`` describes, write its rows under ``out``, and return them (one row per case).

    ``cfg``: from ``attnbench.harness.config(...)``, ``hydra.compose`` or any mapping with the same keys;
    it is copied, never changed. ``out``: the job folder (``rows/``, ``config.yaml``,
    ``env.json``), as ``hydra.run.dir`` on the command line; ``resume=true`` there skips the
    cases it already holds an ``ok`` row for. ``log_level``: the harness's progress lines at this
    level and up are shown for the length of the call (on ``sys.stderr`` unless a handler listens
    already); ``None`` leaves logging alone.

    In a notebook, with Hydra's compose API directly (the variant and impl options come from the
    registries, so store them first)::

        from hydra import compose, initialize_config_dir
        from attnbench.harness.sweep.schema import store_configs
        store_configs()
        with initialize_config_dir(config_dir="/path/to/attnbench/conf", version_base="1.3"):
            cfg = compose("config", overrides=["variant=mla", "model=tiny"])
        rows = harness.run(cfg, out="results/mla_tiny")
    """
    from attnbench.harness.sweep.job import run_job  # torch and the variants: only when a job runs
    from attnbench.harness.sweep.pinning import pinned_device

    job_cfg = _own_copy(cfg)
    if job_cfg.get("task", "benchmark") != "benchmark":
        raise UserError(f"task={str(job_cfg.task)!r} is not run by harness.run, which runs task=benchmark; "
                        "the low-rank study is harness.studies.lowrank.study.main(cfg, out)")
    if not isinstance(out, (str, PathLike)):
        raise UserError(f"out={out!r} is not allowed: the job folder to write, a str or a Path")
    out = check_out_dir(out, flag="out")
    missing = [key for key in _default_keys() if key not in job_cfg]
    if missing:
        raise UserError(f"cfg lacks {', '.join(missing)}; build it with harness.config(...) and change what you need")
    with shown(log_level), pinned_device(str(job_cfg.get("device", "auto")),
                                         lock_dir=job_cfg.get("gpu_lock_dir")) as device:
        job_cfg.device = device
        return run_job(job_cfg, job_dir=out, root=out)


def _default_keys() -> list[str]:
    """The keys of the default config, which every job reads."""
    return [key for key in config() if key != "hydra"]


def _own_copy(cfg: DictConfig | Mapping[str, Any]) -> DictConfig:
    """A resolved, writable copy without Hydra's own node (``return_hydra_config=True`` adds one)."""
    if not isinstance(cfg, (DictConfig, Mapping)):
        raise UserError(f"cfg={type(cfg).__name__} is not allowed: pass harness.config(...), a DictConfig or a dict")
    keys = [k for k in cfg if k != "hydra"]
    source = OmegaConf.masked_copy(cfg, keys) if isinstance(cfg, DictConfig) else {k: cfg[k] for k in keys}
    try:
        return OmegaConf.create(OmegaConf.to_container(OmegaConf.create(source), resolve=True))
    except OmegaConfBaseException as error:
        raise UserError(f"cfg: {condense(error)}") from None


