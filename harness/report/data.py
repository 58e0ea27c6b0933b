"""The rows a report draws: loaded, filtered, one per case and device, split into measured and not.

Rules a reader can rely on:
- Only ``status == "ok"`` rows carry timings; every other row goes to the "cases not measured"
  table with its reason.
- The device is ``env_device_name`` (the GPU's or CPU's model name). Rows from different devices
  are never drawn on one curve: figures put each device on its own panel.
- A machine is a device on a host. When one device name was measured on several hosts (two
  machines of one model running the same sweep), each host is its own device in every table and
  figure ("<device> @ <host>"), and the report says so: no machine's rows are dropped.
- A case measured in several runs on the same machine (same ``case_id``, device and host) is kept
  once: its latest ``ok`` row, else its latest attempt; the report says how many were dropped.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from attnbench.harness import results
from attnbench.harness.report import flagged
from attnbench.harness.results import schema

DEVICE = "env_device_name"
# What fixes a case apart from the axis a figure varies; two rows differing in any of these are
# never on one curve. Both come from the schema (harness/results/schema.py).
SHAPE_COLUMNS = schema.SHAPE
CASE_COLUMNS = (*schema.CASE, "model")
FILTER_HINT = (*CASE_COLUMNS, "device", "run_root", "env_host", DEVICE, "status")

@dataclass(frozen=True)
class ReportData:
    ok: pd.DataFrame  # measured cases, one row per case and device
    not_measured: pd.DataFrame  # every other status, with its reason
    notes: tuple[str, ...]  # what a reader must know about the selection

    @property
    def all_rows(self) -> pd.DataFrame:
        return pd.concat([self.ok, self.not_measured], ignore_index=True)

    def devices(self) -> list[str]:
        return sorted(self.all_rows[DEVICE].dropna().astype(str).unique())


def parse_filters(items: Iterable[str]) -> dict[str, list[str]]:
    """``["phase=decode", "seq=4096,32768"]`` -> ``{"phase": ["decode"], "seq": ["4096", "32768"]}``."""
    filters: dict[str, list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"filter {item!r} is not key=value[,value...] (e.g. seq=4096,32768)")
        filters.setdefault(key.strip(), []).extend(v.strip() for v in value.split(",") if v.strip())
    return filters


def apply_filters(frame: pd.DataFrame, filters: Mapping[str, Iterable[str]]) -> pd.DataFrame:
    """Rows whose column equals one of the given values (compared as text: ``seq=4096`` matches 4096)."""
    for key, values in filters.items():
        if key not in frame.columns:
            raise ValueError(f"filter key {key!r} is not a results column; valid: {', '.join(FILTER_HINT)}, "
                             "or any column that python -m attnbench.harness.results.schema lists")
        wanted = {str(v) for v in values}
        frame = frame[frame[key].map(as_text).isin(wanted)]
        if frame.empty:
            raise ValueError(f"no rows left after the filter {key}={','.join(sorted(wanted))}")
    return frame


def as_text(value: object) -> str:
    """A cell as text for matching: None and NaN alike are empty, and 4096.0 (an int column read
    back as float beside a NaN) reads as the typed "4096"."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def load_rows(paths: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    frame = results.load(paths)
    if frame.empty:
        raise ValueError(f"no result rows under {', '.join(map(str, _as_list(paths)))}")
    return frame


def _as_list(paths: str | Path | Iterable[str | Path]) -> list[str | Path]:
    return [paths] if isinstance(paths, (str, Path)) else list(paths)


def prepare(frame: pd.DataFrame, filters: Mapping[str, Iterable[str]] | None = None) -> ReportData:
    """Filter, keep one row per case and device, and split measured from not measured."""
    frame = apply_filters(frame, filters or {})
    frame = frame.copy()
    if DEVICE not in frame.columns:
        frame[DEVICE] = frame.get("device", "unknown device")
    frame[DEVICE] = frame[DEVICE].fillna(frame.get("device", "unknown device")).astype(str)
    frame, notes = _machines(frame)
    kept = _one_per_case(frame)
    if len(kept) < len(frame):
        notes.append(f"{len(frame) - len(kept)} row(s) repeat a case already measured on the same device and host "
                     "in another run; the latest ok row of each case is kept.")
    is_ok = kept["status"] == "ok"
    ok = kept[is_ok].reset_index(drop=True)
    not_measured = kept[~is_ok].reset_index(drop=True)
    if ok.empty:
        notes.append("No case in the selection was measured (status ok): tables and figures are left out.")
    listed = flagged.listing(ok, what="Flagged rows (hollow grey markers in the figures, † in the tables)")
    if listed:
        notes.append(listed)
    return ReportData(ok=ok, not_measured=not_measured, notes=tuple(notes))


def _machines(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Each host its own device where one device name ran on several hosts; the note that says so."""
    if "env_host" not in frame.columns:
        return frame, []
    hosts = frame["env_host"].map(as_text)
    shared = sorted(d for d, h in hosts.groupby(frame[DEVICE]) if h.nunique() > 1)
    if not shared:
        return frame, []
    several = frame[DEVICE].isin(shared)
    frame.loc[several, DEVICE] = frame.loc[several, DEVICE] + " @ " + hosts[several].replace("", "unknown host")
    notes = [f"{device} was measured on {hosts[frame[DEVICE].str.startswith(device + ' @ ')].nunique()} hosts "
             f"({', '.join(sorted(hosts[several & frame[DEVICE].str.startswith(device + ' @ ')].unique()))}): each "
             "host is its own device in tables and figures (device @ host); no host's rows are merged."
             for device in shared]
    return frame, notes


def _one_per_case(frame: pd.DataFrame) -> pd.DataFrame:
    keys = ["case_id", DEVICE, *(["env_host"] if "env_host" in frame.columns else [])]
    return results.one_per_case(frame, keys).sort_index()
