"""Where a job's row files live, apart from everything else a run writes.

A run or sweep root ``results/<name>/`` keeps its row files in one folder, ``<root>/rows/``, that
holds nothing but row files, so plain readers open it directly::

    pandas.read_parquet("results/<name>/rows")
    pyarrow.dataset.dataset("results/<name>/rows")
    duckdb.sql("select * from 'results/<name>/rows/**/*.parquet'")
    polars.read_parquet("results/<name>/rows/**/*.parquet")

A single run (the job folder is the root) writes ``<root>/rows/*.parquet``; job ``k`` of a sweep
writes ``<root>/rows/<k>/*.parquet``. The job's other files (``config.yaml``, ``env.json``,
``plan.json``, Hydra's ``attnbench.log`` and ``.hydra/``) stay in its job folder ``<root>/<k>/``,
the sweep's (``multirun.yaml``, ``summary.md``, the lock) in the root.

Folders written before this layout (``<root>/<k>/rows/*.parquet``, rows beside the job's logs) are
read as well: a row file is any ``*.parquet`` with a ``rows`` folder among its parents.
"""

from __future__ import annotations

from pathlib import Path

ROWS = "rows"


def rows_dir(job_dir: str | Path, root: str | Path) -> Path:
    """The folder a job writes its row files to: ``<root>/rows/<job folder relative to root>``."""
    job_dir, root = Path(job_dir), Path(root)
    if job_dir.resolve() == root.resolve():
        return root / ROWS
    return root / ROWS / job_dir.resolve().relative_to(root.resolve())


def is_row_file(path: Path, *, under: Path) -> bool:
    """Whether ``path``, found by walking ``under``, is a row file: a ``.parquet`` file with a ``rows``
    folder among its parents (the walked folder itself counts: ``under`` may be a rows folder)."""
    if path.suffix != ".parquet":
        return False
    parents = (*Path(under).resolve().parts, *path.parent.relative_to(under).parts)
    return ROWS in parents


def job_dir_of(row_file: str | Path) -> Path:
    """The job folder (``config.yaml``, ``env.json``) of a row file, in either layout:
    ``<root>/rows/<k>/x.parquet`` and ``<root>/<k>/rows/x.parquet`` both give ``<root>/<k>``."""
    row_file = Path(row_file)
    for rows in row_file.parents:
        if rows.name == ROWS:
            return rows.parent / row_file.parent.relative_to(rows)
    return row_file.parent
