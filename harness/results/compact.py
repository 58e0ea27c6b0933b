"""Pack a finished job's one-row files into one file.

While a job runs, every case's row is its own file, written the moment the case finishes, so a
killed job loses at most the case in flight. Each such file is mostly footer (the schema of some
150 columns): about 40 KB for one row. When the job ends, ``compact`` writes every row of its
rows folder into one file, ``packed.<time>.parquet``, then removes the files it packed. A resumed
job adds one-row files beside the packed one and packs them all again when it ends.

Nothing is lost on the way: the packed file is complete on disk (written to a temporary name and
renamed) before the first input is removed; a job killed in between leaves some rows in two files,
which every reader counts once (``store.drop_copies``: same case, place and finish time). Every
attempt is kept (failed ones, superseded ones): packing changes the files, never the rows.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pyarrow as pa

from attnbench.harness.results import conform
from attnbench.harness.results.store import UnreadableRowFile, drop_copies, read_table, write_table

PACKED = "packed"  # packed.<time_ns>.parquet; a case's own file is <case_id>.<time_ns>.parquet

_log = logging.getLogger(__name__)


def compact(rows_dir: Path) -> Path | None:
    """Pack the row files directly in ``rows_dir`` into one; returns the packed file (None: no rows).

    A file that cannot be read is left where it is, and so is everything else: resume names it and
    re-runs its case, as it would without packing."""
    rows_dir = Path(rows_dir)
    files = sorted(p for p in rows_dir.glob("*.parquet") if p.is_file() and not p.is_symlink())
    if len(files) < 2:  # one file is packed already (a job of one case keeps its case's file)
        return files[0] if files else None
    try:
        tables = [read_table(f) for f in files]
    except UnreadableRowFile as error:
        _log.warning("row files under %s left unpacked: %s", rows_dir, error)
        return None
    frame = drop_copies(conform.to_frame(pa.concat_tables(tables)))
    packed = rows_dir / f"{PACKED}.{time.time_ns()}.parquet"
    write_table(packed, conform.from_frame(frame.sort_values("finished_at", kind="stable")))
    for f in files:  # only now: every row they hold is in the packed file
        os.unlink(f)
    _log.info("packed %d row file(s) into %s", len(files), packed)
    return packed
