"""Results: the row store (one parquet file per finished case), loading, and merging result sets."""

from harness.results.store import (
    PLAN,
    ROWS,
    STATUS_VALUES,
    finished_case_ids,
    load,
    one_per_case,
    read_rows,
    row_files,
    write_frame,
    write_json,
    write_row,
    write_text,
)

__all__ = ["PLAN", "ROWS", "STATUS_VALUES", "finished_case_ids", "load", "one_per_case", "read_rows", "row_files",
           "write_frame", "write_json", "write_row", "write_text"]
