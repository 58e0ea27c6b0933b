"""The pre-check: every job of a run or a sweep is composed by Hydra and planned before the first one
starts, so a mistake costs one line (exit status 2), never a traceback or a half-run sweep.

Hydra composes each job exactly as it will (the same search path, ``--config-dir``, ``-cp``/``-cn``,
``hydra.searchpath``; a sweep expanded by its ``BasicSweeper``): the typed schema
(``harness.app.schema``) refuses a wrong type, an unknown key or group option, and its long message is
condensed here to one line. What Hydra cannot know (k/M sizes, heads % kv_heads, registry names, the
device) comes from ``harness.sweep.plan.plan_cases`` on each job (layers on the meta device). One bad
combination among good ones refuses the whole sweep, naming the combination.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from harness.errors import UserError

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"

# Launcher configs that come from optional plugins (pip install -e '.[launchers]'), by plugin module.
LAUNCHER_PLUGINS = {"joblib": "hydra_plugins.hydra_joblib_launcher",
                    "submitit_local": "hydra_plugins.hydra_submitit_launcher",
                    "submitit_slurm": "hydra_plugins.hydra_submitit_launcher"}
# Launchers whose jobs run on this machine: elsewhere (SLURM) the device is not looked for here.
LOCAL_LAUNCHERS = ("BasicLauncher", "JoblibLauncher", "LocalLauncher")
# The module of the Hydra task function: a relative -cp/--config-path is relative to it, as in Hydra.
TASK_MODULE = "harness.app.main"


def config_path() -> str:
    """The primary config source Hydra gets: the checkout's ``conf/`` folder, or the installed package."""
    from variants.presets import CONF_PACKAGE, conf_root

    root = conf_root()
    return str(root) if isinstance(root, Path) else f"pkg://{CONF_PACKAGE}"


def _check_launcher(name: str) -> None:
    """A launcher whose plugin is missing is one line naming the extra, not Hydra's search-path dump."""
    from variants.presets import conf_root

    base = name
    preset = conf_root() / "hydra" / "launcher" / f"{name}.yaml"
    if preset.is_file():  # our presets extend a plugin's config: check the plugin it names
        defaults = (yaml.safe_load(preset.read_text()) or {}).get("defaults") or []
        base = next((d for d in defaults if isinstance(d, str) and d in LAUNCHER_PLUGINS), name)
    plugin = LAUNCHER_PLUGINS.get(base)
    if plugin is not None and importlib.util.find_spec(plugin) is None:
        raise UserError(f"hydra/launcher={name} needs the launcher plugins: pip install -e '.[launchers]'")


def _schema_field(key: str) -> Any:
    """The schema's type hint at a dotted key (``measure.budget_s``), None when it has none."""
    import dataclasses
    import typing

    from harness.app.schema import RunConfig

    node: Any = RunConfig
    hint: Any = None
    for part in key.split("."):
        hints = typing.get_type_hints(node) if dataclasses.is_dataclass(node) else {}
        if part not in hints:
            return None
        node = hint = hints[part]
    return hint


def _allowed(key: str) -> str:
    """What the schema allows at ``key``: ``one of: a, b``, ``an integer``, ``a number or null``."""
    import typing
    from enum import Enum

    hint = _schema_field(key)
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next(a for a in args if a is not type(None)) if optional else hint
    if isinstance(base, type) and issubclass(base, Enum):
        text = "one of: " + ", ".join(base.__members__)
    else:
        text = {int: "an integer", float: "a number", bool: "one of: true, false", str: "a string"}.get(
            base, "allowed here")
    return text + (" or null" if optional else "")


def _keys(parent: str) -> list[str]:
    """The schema's keys under ``parent`` ("" for the top level), dotted."""
    import dataclasses

    from harness.app.schema import RunConfig

    node = _schema_field(parent) if parent else RunConfig
    prefix = f"{parent}." if parent else ""
    return sorted(f"{prefix}{f.name}" for f in dataclasses.fields(node)) if dataclasses.is_dataclass(node) else []


def condense(error: BaseException) -> str:
    """Hydra's multi-line composition error as one line: the value, the key, what is allowed."""
    if isinstance(error, MissingConfigException) and error.missing_cfg_file and error.options is not None:
        group, _, option = error.missing_cfg_file.rpartition("/")
        if group:  # an unknown group option (variant=mxa)
            return f"{group}={option!r} is not one of: {', '.join(sorted(error.options))}"
    cause = error.__cause__ if error.__cause__ is not None else error
    if isinstance(cause, OmegaConfBaseException) and cause.full_key:
        key = str(cause.full_key)
        if isinstance(cause, (ConfigAttributeError, ConfigKeyError)):  # a key the schema doesn't have (colour=red)
            return f"unknown key {key!r}; valid keys: {', '.join(_keys(key.rpartition('.')[0]))}"
        if isinstance(cause, ValidationError):  # a wrong type or choice (seed=abc, phase=train)
            return f"{key}={cause.value!r} is not {_allowed(key)}"
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    first = lines[0] if lines else type(error).__name__
    if first.startswith("Ambiguous value for argument"):
        return f"{first}: a sweep needs -m (--multirun); a list is key=[a,b]"
    return first


@contextmanager
def _hydra(primary: str, config_dir: str | None) -> Iterator[Any]:
    """A Hydra instance with the search path the app gets (``hydra._internal.utils._run_hydra``)."""
    import os

    from hydra import version
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_automatic_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.global_hydra import GlobalHydra

    version.setbase("1.3")
    search_path = create_automatic_config_search_path(None, TASK_MODULE, primary)
    if config_dir is not None:
        path = os.path.abspath(config_dir)
        if not os.path.isdir(path):
            raise UserError(f"--config-dir {config_dir!r} is not a folder")
        search_path.prepend(provider="command-line", path=f"file://{path}", anchor=SearchPathQuery(provider="schema"))
    try:
        yield Hydra.create_main_hydra2(task_name="attnbench", config_search_path=search_path)
    finally:
        GlobalHydra.instance().clear()


def _compose(hydra: Any, name: str, overrides: list[str], *, multirun: bool) -> DictConfig:
    from hydra.types import RunMode

    try:
        return hydra.compose_config(name, list(overrides), run_mode=RunMode.MULTIRUN if multirun else RunMode.RUN)
    except (HydraException, OmegaConfBaseException) as error:
        raise UserError(condense(error)) from None


def compose_job(primary: str, overrides: list[str], *, config_name: str = "config") -> DictConfig:
    """One job's config as the app composes it (the ConfigStore filled first: ``store_configs``)."""
    with _hydra(primary, None) as hydra:
        return _compose(hydra, config_name, overrides, multirun=False)


def sweep_overrides(multirun: dict) -> list[list[str]]:
    """Every job's overrides, in job-number order, as Hydra's basic sweeper made them (its own code,
    so the job numbers match the folders)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hydra_cfg = multirun["hydra"]
    params = [f"{k}={v}" for k, v in (hydra_cfg["sweeper"].get("params") or {}).items()]
    parsed = OverridesParser.create().parse_overrides([*params, *hydra_cfg["overrides"]["task"]])
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def _jobs(master: DictConfig) -> list[list[str]]:
    """Every job's overrides, as Hydra's BasicSweeper will give them (job-number order)."""
    sweeper = master.hydra.sweeper.get("_target_")
    hydra_overrides = list(master.hydra.overrides.hydra)
    if sweeper != BASIC_SWEEPER:  # other sweepers choose jobs as they go: none is known in advance
        return []
    multirun = {"hydra": OmegaConf.to_container(master.hydra, resolve=False)}
    return [[*hydra_overrides, *job] for job in sweep_overrides(multirun)]


def _swept(jobs: list[list[str]]) -> set[str]:
    values: dict[str, set[str]] = {}
    for job in jobs:
        for override in job:
            key, _, value = override.partition("=")
            values.setdefault(key, set()).add(value)
    return {key for key, vals in values.items() if len(vals) > 1}


# The config groups of conf/: one option each per job.
GROUPS = ("model", "variant", "impl", "measure", "experiment")


def check_group_lists(overrides: Sequence[str]) -> None:
    """Refuse ``impl=[eager,absorbed]``: Hydra reads a list for a config group as several configs
    merged in order, so the job would silently measure the last one only."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for text in overrides:
        try:
            override = parser.parse_override(text)
        except HydraException:
            continue  # Hydra's own one-line error comes from composing
        value = override.value()
        if override.key_or_group in GROUPS and isinstance(value, list):
            group, names = override.key_or_group, ",".join(str(v) for v in value)
            every = " (or impl=all)" if group == "impl" else " (or variant=all)" if group == "variant" else ""
            raise UserError(f"{text}: {group} takes one option per job (a list would merge them and keep the "
                            f"last); to measure each, sweep them: -m {group}={names}{every}")


def check_overrides(argv: Sequence[str], conf: str | Path | None = None) -> None:
    """Raise ``UserError`` (one line) for the first bad job of the command line ``argv`` (a run's, or
    every job of a sweep's); ``conf`` is the primary config folder (default: :func:`config_path`)."""
    from hydra._internal.utils import get_args_parser

    from harness.app.schema import store_configs
    from harness.sweep.pinning import register_resolvers
    from harness.results.paths import check_run_name
    from harness.sweep.plan import plan_cases

    args = get_args_parser().parse_args(list(argv))
    if args.shell_completion or args.hydra_help or args.experimental_rerun is not None:
        return  # Hydra's own commands, with their own arguments (install=bash)
    overrides = list(args.overrides)
    check_group_lists(overrides)
    for override in overrides:
        key, _, value = override.partition("=")
        if key == "hydra/launcher":
            _check_launcher(value)
    store_configs()
    register_resolvers()
    primary = args.config_path if args.config_path is not None else str(conf or config_path())
    with _hydra(primary, args.config_dir) as hydra:
        name = args.config_name or "config"
        master = _compose(hydra, name, overrides, multirun=args.multirun)
        if args.cfg is not None or args.info is not None or args.help:
            return  # shows the config: nothing runs
        multirun = args.multirun or str(master.hydra.mode) == "RunMode.MULTIRUN"
        jobs = _jobs(master) if multirun else [overrides]
        target = str(master.hydra.launcher.get("_target_", ""))
        local = target.rpartition(".")[2] in LOCAL_LAUNCHERS
        swept = _swept(jobs)
        for num, job in enumerate(jobs):
            where = ""
            if len(jobs) > 1:
                which = " ".join(o for o in job if o.partition("=")[0] in swept)
                where = f" (sweep job {num} of {len(jobs)}: {which}; the sweep was refused, no job started)"
            try:
                cfg = _compose(hydra, name, job, multirun=False)
                # Hydra makes results/<name>/ before any job runs: the name is checked here first.
                check_run_name(cfg.name)
                if cfg.task == "benchmark":  # the low-rank study checks its own settings
                    plan_cases(cfg, local=local)
            except (UserError, ValueError) as error:
                raise UserError(f"{error}{where}") from None
