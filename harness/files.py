"""Writing a file so that readers never see half of it: the one atomic write every stage uses."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path | str, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` a temporary file beside ``path``, flush it to disk, then rename it over ``path``.

    A reader (``load`` while a sweep runs, another process calibrating the same device, ``resume``
    after a kill) sees the old file or the new one, never half of one; the fsync makes the rename
    land after the data, so a power cut cannot leave an empty file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique hidden name in the same folder: the rename stays within one file system, concurrent
    # writers never share a temporary, and readers globbing ``*.parquet`` skip it.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
