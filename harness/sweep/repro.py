"""The command line that measures one case again: the ``repro`` column of every row.

A job's config may expand into many cases (``variant=all impl=all phase=both``); a row's command
pins the one case it measured: its variant, implementation, phase, compile mode, dtype, device kind
and sizes, the shape keys the job overrode on its preset, and the job's measure settings as a
preset (``measure=quick``) plus the keys that differ from it. Run as printed, it gives a row with
the same ``case_id``::

    attnbench model=tiny variant=gqa impl=sdpa phase=decode dtype=float32 device=cpu seq=1k batch=1 measure=quick

What it cannot name: a preset of one's own from ``--config-dir`` (add the same flag), and the
GPU index a sweep pinned the job to (``device=cuda`` takes any free one; the index is not part of a
case's identity).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:  # torch-heavy; the report imports markdown_lines without it
    from attnbench.harness.measure.case import Case

PROGRAM = "attnbench"
# Measure keys that do not change what is measured (harness.sweep.job.RESUME_FREE): never printed.
_MEASURE_FREE = ("recalibrate",)
# Top-level keys that change a measurement besides the case's own (their default in conf/config.yaml).
_JOB_DEFAULTS = {"seed": 0, "threads": None}


def _value(value: Any) -> str:
    """A value as a Hydra override writes it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_value(v) for v in value) + "]"
    return str(value)


def _measure_presets() -> dict[str, dict[str, Any]]:
    """``conf/measure/*.yaml`` as values: each preset is ``default`` with its own keys on top."""
    from attnbench.variants.presets import conf_root

    folder = conf_root() / "measure"
    files = {p.name.removesuffix(".yaml"): yaml.safe_load(p.read_text()) or {}
             for p in folder.iterdir() if p.name.endswith(".yaml")}
    base = {k: v for k, v in files.get("default", {}).items() if k != "defaults"}
    return {name: {**base, **{k: v for k, v in values.items() if k != "defaults"}} for name, values in files.items()}


def measure_overrides(measure: Mapping[str, Any]) -> list[str]:
    """The job's measure settings as the nearest preset plus the keys that differ from it."""
    measure = {k: v for k, v in dict(measure).items() if k not in _MEASURE_FREE}
    best: tuple[int, str, list[str]] | None = None
    for name, preset in sorted(_measure_presets().items(), key=lambda item: item[0] != "default"):
        diff = [f"measure.{k}={_value(v)}" for k, v in measure.items() if preset.get(k, object()) != v]
        head = [] if name == "default" else [f"measure={name}"]
        if best is None or len(head) + len(diff) < best[0]:
            best = (len(head) + len(diff), name, head + diff)
    return best[2] if best is not None else [f"measure.{k}={_value(v)}" for k, v in measure.items()]


def job_overrides(cfg: Mapping[str, Any]) -> list[str]:
    """What every case of a job shares: shape keys set on the preset, kv_dtype, seed, threads, measure."""
    from attnbench.harness.sweep.plan import SHAPE_KEYS

    out = [f"{k}={_value(cfg[k])}" for k in SHAPE_KEYS if cfg.get(k) is not None]
    if cfg.get("kv_dtype") not in (None, "auto"):
        out.append(f"kv_dtype={_value(cfg['kv_dtype'])}")
    out += [f"{k}={_value(cfg.get(k))}" for k, default in _JOB_DEFAULTS.items() if cfg.get(k, default) != default]
    return out + measure_overrides(cfg.get("measure") or {})


def case_overrides(case: Case) -> list[str]:
    """What picks this one case out of its job's: its own settings, written as a job would set them."""
    from attnbench.harness.text.units import format_size

    out = [f"model={case.model}", f"variant={case.variant}", f"impl={case.impl}", f"phase={case.phase}",
           f"dtype={case.dtype}", f"device={case.device.split(':')[0]}"]
    if case.compile is not None:
        out.append(f"compile={case.compile}")
    out += [f"seq={format_size(case.seq)}", f"batch={case.batch}"]
    if case.phase == "decode" and case.decode_len != 1:
        out.append(f"decode_len={case.decode_len}")
    if case.seq_lens is not None:
        out.append(f"seq_lens={_value(list(case.seq_lens))}")
    if case.page_size is not None:
        out.append(f"page_size={case.page_size}")
    if case.attention != "self":
        out.append(f"attention={case.attention}")
    return out


def command(case: Case, shared: list[str]) -> str:
    """The shell command that measures ``case`` again (``shared``: its job's ``job_overrides``)."""
    return shlex.join([PROGRAM, *case_overrides(case), *shared])

