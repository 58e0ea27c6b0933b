"""The pre-check: every job of a run or a sweep is composed by Hydra and planned before the first one
starts, so a mistake costs one line (exit status 2), never a traceback or a half-run sweep.

Hydra composes each job exactly as it will (the same search path, ``--config-dir``, ``-cp``/``-cn``,
``hydra.searchpath``; a sweep expanded by its ``BasicSweeper``): the typed schema
(``attnbench.harness.sweep.schema``) refuses a wrong type, an unknown key or group option, and its long message is
condensed here to one line. What Hydra cannot know (k/M sizes, heads % kv_heads, registry names, the
device) comes from ``attnbench.harness.sweep.plan.plan_cases`` on each job (layers on the meta device). One bad
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
from omegaconf.errors import (ConfigAttributeError, ConfigKeyError, InterpolationResolutionError,
                              OmegaConfBaseException, ValidationError)

from attnbench.harness.errors import UserError
from attnbench.variants.core.families import family_shape_keys

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"

# Launcher configs that come from optional plugins (pip install -e '.[launchers]'), by plugin module.
LAUNCHER_PLUGINS = {"joblib": "hydra_plugins.hydra_joblib_launcher",
                    "submitit_local": "hydra_plugins.hydra_submitit_launcher",
                    "submitit_slurm": "hydra_plugins.hydra_submitit_launcher"}
# Launchers whose jobs run on this machine: elsewhere (SLURM) the device is not looked for here.
LOCAL_LAUNCHERS = ("BasicLauncher", "JoblibLauncher", "LocalLauncher")
# The module of the Hydra task function: a relative -cp/--config-path is relative to it, as in Hydra.
TASK_MODULE = "attnbench.harness.app.main"


def config_path() -> str:
    """The primary config source Hydra gets: the checkout's ``conf/`` folder, or the installed package."""
    from attnbench.variants.presets import CONF_PACKAGE, conf_root

    root = conf_root()
    return str(root) if isinstance(root, Path) else f"pkg://{CONF_PACKAGE}"


def _check_launcher(name: str) -> None:
    """A launcher whose plugin is missing is one line naming the extra, not Hydra's search-path dump."""
    from attnbench.variants.presets import conf_root

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

    from attnbench.harness.sweep.schema import RunConfig

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

    from attnbench.harness.sweep.schema import RunConfig

    node = _schema_field(parent) if parent else RunConfig
    prefix = f"{parent}." if parent else ""
    return sorted(f"{prefix}{f.name}" for f in dataclasses.fields(node)) if dataclasses.is_dataclass(node) else []


def _preset_key(name: str) -> str:
    """Why ``model.<name>=...`` was refused: a shape key this preset does not set needs Hydra's ``+``;
    any other name is no shape key at all."""
    from attnbench.variants.shape import shape_key_names

    valid = shape_key_names()
    if name in valid:
        return (f"model.{name} is not set by this model preset; add it with +model.{name}=... "
                "(Hydra's + adds a key a config does not have)")
    return f"unknown key 'model.{name}'; valid shape keys: {', '.join(valid)}"


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
            if "." not in key and key in family_shape_keys():  # a preset's key, set through its group
                return f"unknown key {key!r}: it is a shape key of the model preset; set it as model.{key}=..."
            if key.startswith("model."):  # the preset is data, not schema: its keys are the shape's
                return _preset_key(key.partition(".")[2])
            return f"unknown key {key!r}; valid keys: {', '.join(_keys(key.rpartition('.')[0]))}"
        if isinstance(cause, ValidationError):  # a wrong type or choice (seed=abc, phase=train)
            return f"{key}={cause.value!r} is not {_allowed(key)}"
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    first = lines[0] if lines else type(error).__name__
    if first.startswith(("LexerNoViableAltException", "Error parsing override")) or "mismatched input" in first:
        text = first.partition(": ")[2] or first
        return (f"{text} is not a value the command line can read: use letters, digits and . _ - / : "
                f"(quote anything else: 'key=\"text\"'); sizes take a k or M suffix (seq=1M), not a power (10^12)")
    if first.startswith("Ambiguous value for argument"):
        return f"{first}: a sweep needs -m (--multirun); a list is key=[a,b]"
    return first


def check_config_files(folder: Path, *, limit: int = 2000) -> None:
    """Every yaml file of a ``--config-dir`` must be text that parses: Hydra's own error for a broken
    one is a long traceback that doesn't name the file."""
    for num, path in enumerate(sorted(folder.rglob("*.yaml"))):
        if num >= limit:
            return
        try:
            yaml.safe_load(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise UserError(f"--config-dir: {path} is not text (not UTF-8); a preset is a yaml file") from None
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            what = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise UserError(f"--config-dir: {path} is not valid yaml{where} ({what}); fix or remove it") from None
        except OSError as error:
            raise UserError(f"--config-dir: cannot read {path} ({error.strerror}); fix or remove it") from None


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
        check_config_files(Path(path))
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


def compose_job(primary: str, overrides: list[str], *, config_name: str = "config",
                config_dir: str | None = None) -> DictConfig:
    """One job's config as the app composes it (the ConfigStore filled first: ``store_configs``);
    ``config_dir``: the run's ``--config-dir``."""
    with _hydra(primary, config_dir) as hydra:
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


def _parsed(overrides: Sequence[str]) -> list[Any]:
    """Hydra's parsed overrides; one it can't read is left to composing (its one-line error)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser, parsed = OverridesParser.create(), []
    for text in overrides:
        try:
            parsed.append(parser.parse_override(text))
        except HydraException:
            continue
    return parsed


def check_added_keys(overrides: Sequence[str]) -> None:
    """Refuse ``+seqq=1`` and ``++colour=red``: Hydra's ``+`` adds a key the typed schema doesn't have
    (the struct check is off for it), so a misspelt key would be ignored silently."""
    for override in _parsed(overrides):
        if not (override.is_add() or override.is_force_add()) or override.get_key_element().startswith("hydra"):
            continue
        key = override.key_or_group
        top = key.split(".")[0].split("/")[0].split("@")[0]
        if (top in GROUPS and "." not in key) or top in ("model", "variant", "impl", "lowrank"):
            continue  # +experiment=x adds a group option; model., variant., impl., lowrank. hold any keys
        if _schema_field(key) is None:
            parent = key.rpartition(".")[0] if _schema_field(key.rpartition(".")[0]) is not None else ""
            raise UserError(f"unknown key {key!r} (added with {override.input_line.split(key)[0]}); valid keys: "
                            f"{', '.join(_keys(parent))}")


def check_group_paths(overrides: Sequence[str]) -> None:
    """A group option is a preset's name, never a path: ``model=../../tmp/x`` would load any yaml file."""
    from attnbench.variants.presets import preset_names

    for text in overrides:
        key, sep, value = text.lstrip("+~").partition("=")
        group = key.split("@")[0]
        if not sep or group.split("/")[0] not in (*GROUPS, "hydra"):
            continue
        if ".." in Path(value).parts or value.startswith(("/", "\\")) or "/" in group.removeprefix("hydra/"):
            valid = f"one of: {', '.join(preset_names())}" if group == "model" else f"a file name of conf/{group}/"
            raise UserError(f"{text}: {group} takes a preset's name, not a path; allowed: {valid} (or a preset "
                            f"of your own in --config-dir <folder>/{group}/)")


def _resolved(cfg: DictConfig) -> None:
    """Resolve every interpolation of a job's config now: a missing environment variable is one line."""
    try:
        for key in cfg:  # hydra's own node resolves against the running app (${hydra:...}): not here
            node = cfg[key] if key != "hydra" else None  # reading a value resolves it
            if OmegaConf.is_config(node):
                OmegaConf.to_container(node, resolve=True)
    except InterpolationResolutionError as error:
        key = str(error.full_key or "?")
        raw: Any = OmegaConf.to_container(cfg, resolve=False)  # the text typed, ${...}, never resolved again
        for part in key.split("."):
            raw = raw.get(part) if isinstance(raw, dict) else raw
        why = str(error.msg or error).splitlines()[0]
        why = why.removeprefix("KeyError raised while resolving interpolation: ").strip('"')
        raise UserError(f"{key}={raw} cannot be resolved: {why}; set it, or give {key} a plain value") from None


def _check_job(cfg: DictConfig, *, multirun: bool) -> None:
    """What one job's composed config must hold beyond Hydra's types: ranges, the device, resume's name."""
    from attnbench.harness.sweep.schema import check_ranges
    from attnbench.harness.measure.calibrate import cache_dir_of
    from attnbench.harness.measure.parse import check_device_name

    check_ranges(cfg)
    check_device_name(str(cfg.device))
    if cfg.task == "benchmark" and cfg.measure.calibrate:
        check_cache_dir(cache_dir_of(str(cfg.calibration_dir)))
    folder = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    by_name = "${name}" in str(OmegaConf.to_container(cfg.hydra, resolve=False)[folder.split(".")[1]]["dir"])
    if cfg.resume and OmegaConf.is_interpolation(cfg, "name") and by_name:  # a folder named by the time: new
        raise UserError("resume=true needs name=<the run to resume> (without one the name is the current time: "
                        f"a new, empty run); e.g. resume=true name=my_sweep (or {folder}=<its folder>)")


def check_cache_dir(path: Path) -> None:
    """The calibration cache folder, made now (the job would make it first thing): a path it cannot
    be made at (a file in the way, /proc, read-only) is one line before any run folder exists."""
    from attnbench.harness.errors import describe_os_error
    from attnbench.harness.results.paths import check_out_dir

    check_out_dir(path, flag="calibration_dir")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"calibration_dir={str(path)!r}: {describe_os_error(error)}") from None


def check_output_dir(cfg: DictConfig, *, multirun: bool) -> Path:
    """``hydra.run.dir`` (``hydra.sweep.dir`` for a sweep): a folder of its own that can be written, never
    the working folder or one above it (Hydra writes .hydra/, rows/ and job folders into it)."""
    import os

    from attnbench.harness.results.paths import check_out_dir

    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    value = str(OmegaConf.select(cfg, key))
    allowed = "a folder of its own, e.g. results/<name> (the default) or any new or empty folder"
    if not value.strip():
        raise UserError(f"{key}={value!r} is empty (it would write into the working folder); allowed: {allowed}")
    path = Path(os.path.abspath(os.path.expanduser(value)))
    here = Path.cwd().resolve()
    if path == here or path in here.parents:
        raise UserError(f"{key}={value!r} is the working folder or one above it ({path}); allowed: {allowed}")
    return check_out_dir(path, flag=key)


def check_lowrank(cfg: DictConfig) -> None:
    """``task=lowrank`` needs the study's ``lowrank`` block (experiment=lowrank_smollm2), checked whole."""
    from attnbench.harness.studies.lowrank.settings import StudySettings, check_model
    from attnbench.harness.sweep.plan import group_name

    block = cfg.get("lowrank")
    if block is None:
        raise UserError("task=lowrank needs the study's settings: add experiment=lowrank_smollm2 "
                        "(or run python -m attnbench.harness.studies.lowrank)")
    settings = StudySettings.from_mapping({**OmegaConf.to_container(block, resolve=True),
                                           "model": group_name(cfg.model)})
    check_model(settings.model, settings.layers)


def check_overrides(argv: Sequence[str], conf: str | Path | None = None) -> None:
    """Raise ``UserError`` (one line) for the first bad job of the command line ``argv`` (a run's, or
    every job of a sweep's); ``conf`` is the primary config folder (default: :func:`config_path`)."""
    from hydra._internal.utils import get_args_parser

    from attnbench.harness.sweep.schema import store_configs
    from attnbench.harness.sweep.pinning import register_resolvers
    from attnbench.harness.results.paths import check_run_name
    from attnbench.harness.sweep.plan import plan_cases

    args = get_args_parser().parse_args(list(argv))
    if args.shell_completion or args.hydra_help or args.experimental_rerun is not None:
        return  # Hydra's own commands, with their own arguments (install=bash)
    overrides = list(args.overrides)
    check_group_lists(overrides)
    check_group_paths(overrides)
    check_added_keys(overrides)
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
                _resolved(cfg)
                # Hydra makes results/<name>/ before any job runs: the name and folder are checked here first.
                check_run_name(cfg.name)
                if num == 0:
                    check_output_dir(cfg, multirun=multirun)
                _check_job(cfg, multirun=multirun)
                if cfg.task == "benchmark":
                    plan_cases(cfg, local=local)
                else:  # task=lowrank: the study's settings, checked before any folder is made
                    check_lowrank(cfg)
            except (UserError, ValueError) as error:
                raise UserError(f"{error}{where}") from None
