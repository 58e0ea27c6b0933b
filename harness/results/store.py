"""The results store: one parquet file per finished case, written the moment it finishes.

Layout of a run or sweep root ``results/<name>/`` (``attnbench.harness.results.layout``): row files only under
``<root>/rows/`` (``rows/<case_id>.<attempt>.parquet`` for a single run, ``rows/<job number>/...`` in a
sweep), so ``pandas.read_parquet(<root>/rows)`` reads them; each job folder (the root for a single
run, ``<root>/<job number>/`` in a sweep) holds ``config.yaml`` (the job's resolved config),
``env.json``, ``plan.json`` and its log. Every file is written to a temporary name and renamed, so a
killed run leaves complete files only, and concurrent jobs never share a file. A job that finishes
packs its one-row files into one file (``attnbench.harness.results.compact``); readers take both forms.

``load(paths or globs)`` returns one DataFrame over any set of runs and sweeps, one row per case
and place it ran (``IDENTITY``: the run or sweep folder's name, the host and the device), so two
machines' sweeps under one ``name=`` keep both machines' rows; a case re-run by ``resume`` on the
same machine keeps its ``ok`` row, else its latest attempt.

A row file that cannot be read (truncated, empty, damaged, not an attnbench row file) is never
skipped silently: ``load`` raises ``UnreadableRowFile`` naming it and the fix, and resume
(``finished_case_ids``) sets it aside as ``<file>.unreadable`` with a warning, so its case re-runs.

Every row file holds every column of ``attnbench.harness.results.schema`` in its declared Arrow type, so
plain ``pandas.read_parquet`` concatenates any of them; files written before the schema are
conformed when read here (``attnbench.harness.results.conform``).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from attnbench.harness.errors import UserError
from attnbench.harness.files import atomic_write
from attnbench.harness.results import conform
from attnbench.harness.results.layout import ROWS, is_row_file, job_dir_of, rows_dir
from attnbench.harness.results.schema import COLUMNS, STATUS_VALUES

PLAN = "plan.json"  # per job: the cases it planned (case_id, label), written before the first is measured
# Where a row was measured: rows of one case that differ in any of these are different results
# (two machines' sweeps run under one name= share run_root, never host and device together).
IDENTITY = ("run_root", "env_host", "env_device_name", "case_id")
SET_ASIDE = ".unreadable"  # resume renames an unreadable row file to <file>.unreadable (kept, not read)

_log = logging.getLogger(__name__)


class UnreadableRowFile(UserError):
    """A row file that is not a readable attnbench row file; the message names it and the fix."""

    def __init__(self, path: Path, why: str, *, wrong_type: bool = False) -> None:
        self.path, self.why = Path(path), why
        if wrong_type:  # a value is never guessed (bool("false") is True): the file is refused, by name
            super().__init__(f"row file {path}: {why}; fix or delete the file (resume=true re-runs its case)")
        else:
            super().__init__(f"unreadable row file {path}: delete it and resume (resume=true re-runs its case); {why}")


def write_row(job_dir: Path, row: Mapping[str, object], *, root: Path | None = None) -> Path:
    """Write one case's row as its own parquet file, every column of ``attnbench.harness.results.schema`` in
    its declared type (absent ones null), under the job's rows folder (``layout.rows_dir``; without
    ``root``, ``<job_dir>/rows``); returns its path."""
    assert row.get("status") in STATUS_VALUES, f"bad status {row.get('status')!r}"
    table = conform.to_table([row])
    folder = rows_dir(job_dir, root) if root is not None else Path(job_dir) / ROWS
    path = folder / f"{row['case_id']}.{time.time_ns()}.parquet"
    write_table(path, table)
    return path


def write_table(path: Path, table: pa.Table) -> None:
    """A table of the schema as one row file, atomically (units and pandas dtypes in its metadata)."""
    table = conform.for_file(table)
    # Page checksums turn a damaged data page into an error on reading, not wrong numbers. Statistics
    # (min/max per column, for readers that skip files) say nothing of one row and cost ~9 KB of footer.
    atomic_write(Path(path), lambda tmp: pq.write_table(table, tmp, write_page_checksum=True,
                                                        write_statistics=table.num_rows > 1))


def write_frame(path: Path, frame: pd.DataFrame) -> None:
    """A whole result set as one parquet file (``attnbench.harness.results.merge``)."""
    write_table(Path(path), conform.from_frame(frame))


def write_json(path: Path, payload: Mapping[str, object]) -> None:
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(json.dumps(dict(payload), indent=2, default=str)))


def write_text(path: Path, text: str) -> None:
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))


class LinkInResults(UserError):
    """A symbolic link inside a results folder: refused by name (see ``row_files``)."""

    def __init__(self, link: Path) -> None:
        target = os.readlink(link)
        super().__init__(f"{link} is a symbolic link (to {target}); attnbench follows no link inside a results "
                         f"folder (it would read another tree's rows, or miss them): pass {target} as a source of "
                         "its own, or copy it in")


def row_files(paths: Iterable[str | Path]) -> list[Path]:
    """Every row file under the given files, folders or glob patterns.

    Symbolic links: a path given here (or matched by its glob) is followed, and a file reached twice
    is read once; a link *inside* a folder (a job folder, a row file, any folder) is refused by name
    (``LinkInResults``). Every reader goes through here or ``_walk_rows``: load, merge, report,
    status, nightly ingest and resume (``finished_case_ids``) answer a link the same way."""
    files: dict[Path, Path] = {}
    for item in paths:
        matches = glob.glob(str(item), recursive=True) or ([str(item)] if Path(item).exists() else [])
        if not matches:
            raise ValueError(f"no results at {item!s}")
        for match in map(Path, matches):
            found = _walk_rows(match) if match.is_dir() else [match] if match.suffix == ".parquet" else []
            for path in found:
                files.setdefault(path.resolve(), path)
    return sorted(files.values())


def _walk_rows(folder: Path) -> list[Path]:
    """The row files (``*.parquet`` under a ``rows`` folder) under ``folder``; ``LinkInResults`` for the
    first link inside it."""
    found = []
    for here, folders, names in os.walk(folder):  # followlinks=False: a linked folder is listed, not entered
        here_path = Path(here)
        for name in sorted(folders):
            if (here_path / name).is_symlink():
                raise LinkInResults(here_path / name)
        for name in sorted(names):
            path = here_path / name
            if is_row_file(path, under=folder):
                if path.is_symlink():
                    raise LinkInResults(path)
                found.append(path)
    return found


def load(paths: str | Path | Iterable[str | Path], *, attempts: bool = False) -> pd.DataFrame:
    """One DataFrame over the rows under ``paths``; ``attempts=True`` keeps superseded attempts too.

    A case with two ``ok`` rows in one run on one machine (two sweeps under one name, a job run twice
    without resume) is refused as merge refuses it (``DuplicateCase``), never one kept at random."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files = row_files(paths)
    if not files:
        return pd.DataFrame()
    tables = [read_table(Path(f)) for f in files]
    where = [str(f) for f, t in zip(files, tables, strict=True) for _ in range(t.num_rows)]
    frame = conform.to_frame(pa.concat_tables(tables)).assign(_file=where)
    frame = drop_copies(frame)
    if attempts or frame.empty:
        return frame.drop(columns=["_file"]).reset_index(drop=True)
    frame = frame.assign(_origin=[str(job_dir_of(f)) for f in frame["_file"]])
    kept, duplicates, _ = pick_per_case(frame, list(IDENTITY))
    if duplicates:
        raise DuplicateCase(duplicates, fix="merge the folders with python -m attnbench.harness.results.merge ... "
                                            "--prefer newest (or --prefer <folder>), or move one row file away")
    frame = frame.loc[kept].drop(columns=["_file", "_origin"])
    return frame.sort_values(["run_root", "finished_at"]).reset_index(drop=True)


def drop_copies(frame: pd.DataFrame) -> pd.DataFrame:
    """One of each row found in two files of one rows folder: a job killed while packing its rows
    (``compact``) leaves the packed file and some of the one-row files it packed, the same row (case,
    place, time) twice. With a ``_file`` column, only copies in the same folder are dropped: a whole
    folder copied elsewhere is a duplicate for ``load`` and ``merge`` to name, not a copy to hide."""
    if frame.empty:
        return frame
    folder = [str(Path(f).parent) for f in frame["_file"]] if "_file" in frame.columns else [""] * len(frame)
    keys = [*IDENTITY, "finished_at", "_folder"]
    return frame[~frame.assign(_folder=folder).duplicated(keys, keep="first")]


class DuplicateCase(UserError):
    """A case with ``ok`` rows in two places where one result is expected; names the first and both places."""

    def __init__(self, duplicates: list[pd.DataFrame], *, fix: str) -> None:
        from attnbench.harness.text.label import case_label  # torch-heavy: only when there is something to name

        first = duplicates[0]
        a, b = first.iloc[0], first.iloc[1]
        others = len(duplicates) - 1
        more = f" ({others} more duplicate case{'s' if others > 1 else ''})" if others else ""
        super().__init__(f"duplicate case {case_label(a)} [{a['case_id']}]: ok rows in {_place(a, b)} and "
                         f"{_place(b, a)}; {fix}{more}")


def _place(row: pd.Series, other: pd.Series) -> str:
    """Where an ok row came from: its job folder, or its file when both come from one job folder."""
    return row["_file"] if row["_origin"] == other["_origin"] else row["_origin"]


def pick_per_case(frame: pd.DataFrame, keys: list[str], *,
                  choose: Callable[[pd.DataFrame], pd.Series | None] | None = None,
                  ) -> tuple[list[Hashable], list[pd.DataFrame], list[tuple[pd.Series, pd.DataFrame]]]:
    """The one rule ``load`` and ``merge`` share, per group of ``keys``: its ``ok`` row; no ok row: its
    latest attempt; several ok rows: a duplicate, unless ``choose`` (``merge --prefer``) picks one.

    Returns the index labels kept, the duplicates (each group's ok rows, oldest first) and the
    choices made (the row kept, all ok rows of its group)."""
    kept: list[Hashable] = []
    duplicates: list[pd.DataFrame] = []
    chosen: list[tuple[pd.Series, pd.DataFrame]] = []
    for _, attempts in frame.groupby(keys, sort=False, dropna=False):
        oks = attempts[attempts["status"] == "ok"]
        if len(oks) > 1:
            keep = choose(oks) if choose is not None else None
            if keep is None:
                duplicates.append(oks.sort_values("finished_at"))
                continue
            chosen.append((keep, oks))
            kept.append(keep.name)
        elif len(oks) == 1:
            kept.append(oks.index[0])
        else:
            kept.append(attempts.sort_values("finished_at").index[-1])
    return kept, duplicates, chosen


def read_table(path: Path) -> pa.Table:
    """One row file conformed to the schema (old-format files included); ``UnreadableRowFile`` when
    it is damaged or is not a row file."""
    try:
        # Page checksums (written by write_row) turn a damaged data page into an error, not wrong numbers.
        table = pq.read_table(path, page_checksum_verification=True)
        names = table.column_names  # decodes the footer's names: a damaged footer fails here
        table.validate(full=True)  # e.g. text that is not UTF-8: a damaged page without a checksum
        # The footer's own key-value text (pyarrow reads the copy inside ARROW:schema): damaged, other
        # readers (polars) refuse the file.
        for value in (pq.read_metadata(path).metadata or {}).values():
            value.decode("utf-8")
    except (pa.ArrowException, OSError, ValueError) as error:
        raise UnreadableRowFile(path, _first_line(error) or type(error).__name__) from None
    missing = [c for c in ("case_id", "status") if c not in names]
    if missing:
        raise UnreadableRowFile(path, f"not an attnbench row file: no {', '.join(missing)} column")
    declared = {c.name: c for c in COLUMNS}
    for field in table.schema:  # a damaged footer can turn a text column into bytes; no writer makes those
        if pa.types.is_binary(field.type) and field.name in declared and declared[field.name].kind == "string":
            raise UnreadableRowFile(path, f"column {field.name} holds bytes, not text: a damaged file")
    try:
        return conform.conform(table)
    except conform.ColumnTypeError as error:
        raise UnreadableRowFile(path, str(error), wrong_type=True) from None
    except (pa.ArrowException, ValueError, TypeError) as error:
        raise UnreadableRowFile(path, f"not an attnbench row file: {_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else ""


def read_rows(files: Iterable[Path]) -> pd.DataFrame:
    """The rows of these row files, each conformed to the schema (old-format files included)."""
    return conform.to_frame(pa.concat_tables([read_table(Path(f)) for f in files]))


def read_readable(files: Iterable[Path]) -> tuple[pd.DataFrame, list[UnreadableRowFile]]:
    """The rows of the files that can be read, and one ``UnreadableRowFile`` per file that cannot
    (for commands that go on and name them: status)."""
    tables, bad = [], []
    for f in files:
        try:
            tables.append(read_table(Path(f)))
        except UnreadableRowFile as error:
            bad.append(error)
    return conform.to_frame(pa.concat_tables(tables or [conform.to_table([])])), bad


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
    files = _walk_rows(root)  # one-row files and packed ones alike
    done: set[str] = set()
    for f in files:
        try:
            frame = read_table(f).select(["case_id", "status"]).to_pandas()
        except UnreadableRowFile as error:
            _set_aside(error)
            continue
        done.update(frame.loc[frame["status"] == "ok", "case_id"])
    return done


def _set_aside(error: UnreadableRowFile) -> None:
    """Resume treats an unreadable row file as missing: its case re-runs. The file is renamed, not
    deleted (its bytes may still matter to someone), so that ``load`` reads the new row instead."""
    aside = error.path.with_name(error.path.name + SET_ASIDE)
    try:
        os.replace(error.path, aside)
    except FileNotFoundError:  # another job of the sweep, resuming at the same time, moved it first
        return
    _log.warning("unreadable row file %s (%s): its case re-runs; the file is kept as %s", error.path, error.why,
                 aside)
