"""Check command-line overrides before Hydra composes anything, so a typo costs one line, not a
traceback or a half-run sweep. Each value of a sweep (``seq=1k,abc``) is checked on its own.

Combinations (``heads=8 kv_heads=3``) can only be judged once composed; ``harness.sweep.plan`` does that
per job with the same one-line errors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

from harness.measure.case import DTYPES, parse_size
from harness.errors import UserError
from harness.sweep.plan import PHASE_CHOICES
from variants.layer import COMPILE_MODES
from variants.registry import IMPLEMENTATIONS, VARIANTS

GROUPS = ("model", "variant", "impl", "measure", "experiment")
# Blocks that an experiment adds (conf/experiment/lowrank_smollm2.yaml): Hydra checks their fields.
BLOCKS = ("lowrank",)
SIZE_KEYS = ("seq", "batch", "decode_len", "hidden", "heads", "head_dim", "d_c", "d_r")
OPTIONAL_SIZE_KEYS = ("kv_heads", "q_rank", "threads")  # also accept none
CHOICES: dict[str, tuple[str, ...]] = {
    "phase": PHASE_CHOICES,
    "compile": ("none", *COMPILE_MODES),
    "dtype": ("auto", *DTYPES),
    "attention": ("self", "cross"),
    "task": ("benchmark", "lowrank"),
    "resume": ("true", "false"),
}


def _values(override: Any) -> list[Any]:
    if override.is_sweep_override():
        try:
            return list(override.sweep_string_iterator())
        except Exception:  # noqa: BLE001 - exotic sweeps (intervals) are Hydra's to check
            return []
    value = override.value()
    return list(value) if isinstance(value, list) else [value]


def _group_options(conf_dir: Path, group: str) -> list[str]:
    options = {p.stem for p in (conf_dir / group).glob("*.yaml")}
    if group == "variant":
        options |= set(VARIANTS.names())
    if group == "impl":
        options |= set(IMPLEMENTATIONS.names())
    return sorted(options)


def _check_value(key: str, value: Any, conf_dir: Path) -> None:
    text = str(value)
    if key in GROUPS:
        options = _group_options(conf_dir, key)
        if text not in options and text != "null":
            raise UserError(f"{key}={text!r} is not one of: {', '.join(options)}")
    elif key in SIZE_KEYS:
        _wrap(parse_size, key, value)
    elif key in OPTIONAL_SIZE_KEYS:
        if text.lower() not in ("none", "null"):
            _wrap(parse_size, key, value)
    elif key in CHOICES and text.lower() not in CHOICES[key]:
        raise UserError(f"{key}={text!r} is not one of: {', '.join(CHOICES[key])}")
    elif key == "device" and not (text in ("auto", "cpu", "cuda") or text.startswith("cuda:")):
        raise UserError(f"device={text!r} is not one of: auto, cpu, cuda, cuda:<index>")


def _wrap(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except ValueError as error:
        raise UserError(str(error)) from None


# Launcher configs that come from optional plugins (pip install -e '.[launchers]'), by plugin module.
LAUNCHER_PLUGINS = {"joblib": "hydra_plugins.hydra_joblib_launcher",
                    "submitit_local": "hydra_plugins.hydra_submitit_launcher",
                    "submitit_slurm": "hydra_plugins.hydra_submitit_launcher"}


def _check_launcher(name: str, conf_dir: Path) -> None:
    """A launcher whose plugin is missing is one line naming the extra, not Hydra's search-path dump."""
    import importlib.util

    base = name
    preset = conf_dir / "hydra" / "launcher" / f"{name}.yaml"
    if preset.exists():  # our presets extend a plugin's config: check the plugin it names
        defaults = (yaml.safe_load(preset.read_text()) or {}).get("defaults") or []
        base = next((d for d in defaults if isinstance(d, str) and d in LAUNCHER_PLUGINS), name)
    plugin = LAUNCHER_PLUGINS.get(base)
    if plugin is not None and importlib.util.find_spec(plugin) is None:
        raise UserError(f"hydra/launcher={name} needs the launcher plugins: pip install -e '.[launchers]'")


def check_overrides(args: Iterable[str], conf_dir: Path) -> None:
    """Raise ``UserError`` (one line) for the first bad key or value among the overrides."""
    overrides = [a for a in args if not a.startswith("-") and "=" in a or a.startswith("~")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as error:  # noqa: BLE001 - Hydra's grammar errors, reported in one line
        raise UserError(str(error).strip().splitlines()[0]) from None
    primary = yaml.safe_load((conf_dir / "config.yaml").read_text())
    top_keys = sorted(k for k in primary if k not in ("defaults", "hydra"))
    for override in parsed:
        key = override.key_or_group
        if key == "hydra/launcher":
            _check_launcher(str(override.value()), conf_dir)
        root = key.split(".")[0].split("/")[0]  # hydra/launcher=joblib: a Hydra group, Hydra's to check
        if root == "hydra" or override.package is not None or override.is_delete():
            continue
        if root in GROUPS + BLOCKS and key != root:
            continue  # a field inside a group or block (measure.budget_s=2): Hydra checks it exists
        if key not in GROUPS and key not in top_keys and not override.is_add():
            raise UserError(f"unknown key {key!r}; valid keys: {', '.join(sorted([*top_keys, *GROUPS]))}")
        for value in _values(override):
            _check_value(key, value, conf_dir)
