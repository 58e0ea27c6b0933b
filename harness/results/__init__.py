"""Results: the row schema, the row store (one parquet file per finished case), loading, and merging.

The store's names are loaded on first use (PEP 562), so that ``python -m attnbench.harness.results.schema``
runs the schema module once, not after the package has already imported it through the store.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DuplicateCase", "IDENTITY", "LinkInResults", "PLAN", "ROWS", "STATUS_VALUES", "UnreadableRowFile", "drop_copies", "finished_case_ids", "load",
           "one_per_case", "pick_per_case", "read_readable", "read_rows", "read_table", "row_files",
           "write_frame", "write_json", "write_row", "write_table", "write_text"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from attnbench.harness.results import store

        return getattr(store, name)
    raise AttributeError(f"module 'attnbench.harness.results' has no attribute {name!r}")
