"""The results store: one parquet file per finished case, written the moment it finishes.

Layout of a run or sweep root ``results/<name>/``: each job folder (the root for a single run,
``<root>/<job number>/`` in a sweep) holds ``rows/<case_id>.<attempt>.parquet``, ``config.yaml``
(the job's resolved config) and ``env.json``. Every file is written to a temporary name and
renamed, so a killed run leaves complete files only, and concurrent jobs never share a file.

``load(paths or globs)`` returns one DataFrame over any set of runs and sweeps, one row per case
and root: a case re-run by ``resume`` keeps its ``ok`` row, else its latest attempt.

Every row file holds every column of ``harness.results.schema`` in its declared Arrow type, so
plain ``pandas.read_parquet`` concatenates any of them; files written before the schema are
conformed when read here (``harness.results.conform``).
"""

from __future__ import annotations

import glob
import json
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from harness.files import atomic_write
from harness.results import conform
from harness.results.schema import STATUS_VALUES

ROWS = "rows"
PLAN = "plan.json"  # per job: the cases it planned (case_id, label), written before the first is measured


def write_row(job_dir: Path, row: Mapping[str, object]) -> Path:
    """Write one case's row as its own parquet file, every column of ``harness.results.schema`` in
    its declared type (absent ones null); returns its path."""
    assert row.get("status") in STATUS_VALUES, f"bad status {row.get('status')!r}"
    table = conform.to_table([row])
    path = Path(job_dir) / ROWS / f"{row['case_id']}.{time.time_ns()}.parquet"
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))
    return path


def write_frame(path: Path, frame: pd.DataFrame) -> None:
    """A whole result set as one parquet file (``harness.results.merge``)."""
    table = conform.from_frame(frame)
    atomic_write(Path(path), lambda tmp: pq.write_table(table, tmp))


def write_json(path: Path, payload: Mapping[str, object]) -> None:
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(json.dumps(dict(payload), indent=2, default=str)))


def write_text(path: Path, text: str) -> None:
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))


def row_files(paths: Iterable[str | Path]) -> list[Path]:
    """Every row file under the given files, folders or glob patterns."""
    files: set[Path] = set()
    for item in paths:
        matches = glob.glob(str(item), recursive=True) or ([str(item)] if Path(item).exists() else [])
        if not matches:
            raise ValueError(f"no results at {item!s}")
        for match in map(Path, matches):
            if match.is_dir():
                files.update(p for p in match.rglob("*.parquet") if p.parent.name == ROWS)
            elif match.suffix == ".parquet":
                files.add(match)
    return sorted(files)


def load(paths: str | Path | Iterable[str | Path], *, attempts: bool = False) -> pd.DataFrame:
    """One DataFrame over the rows under ``paths``; ``attempts=True`` keeps superseded attempts too."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files = row_files(paths)
    if not files:
        return pd.DataFrame()
    frame = read_rows(files)
    if attempts or frame.empty:
        return frame
    frame = one_per_case(frame, ["run_root", "case_id"])
    return frame.sort_values(["run_root", "finished_at"]).reset_index(drop=True)


def read_rows(files: Iterable[Path]) -> pd.DataFrame:
    """The rows of these row files, each conformed to the schema (old-format files included)."""
    return conform.to_frame(pa.concat_tables([conform.conform(pq.read_table(f)) for f in files]))


def one_per_case(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per ``keys``: an ok row wins over failed attempts, then the latest attempt."""
    frame = frame.assign(_ok=(frame["status"] == "ok").astype(int))
    frame = frame.sort_values(["_ok", "finished_at"], kind="stable").drop_duplicates(keys, keep="last")
    return frame.drop(columns=["_ok"])


def finished_case_ids(root: Path) -> set[str]:
    """Cases that already have an ``ok`` row anywhere under a run or sweep root."""
    root = Path(root)
    if not root.exists():
        return set()
    files = [p for p in root.rglob("*.parquet") if p.parent.name == ROWS]
    done: set[str] = set()
    for f in files:
        frame = pd.read_parquet(f, columns=["case_id", "status"])
        done.update(frame.loc[frame["status"] == "ok", "case_id"])
    return done
