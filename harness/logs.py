"""Where the harness's progress lines go: ``logging``, under the ``harness`` logger.

Every module logs through its own ``logging.getLogger(__name__)``; nothing here configures logging
at import time. Under Hydra (``run.py``), Hydra's ``job_logging`` sends the records to the console
and to ``<job dir>/<task>.log``. Elsewhere (a notebook, a script, a test) the records propagate to
the root logger as usual, and the two helpers below make them visible for the length of one call
without leaving any configuration behind.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

ROOT_LOGGER = "attnbench.harness"
LevelName = int | str


def level_number(level: LevelName) -> int:
    """``"INFO"``/``"info"``/``20`` -> 20; a one-line ``ValueError`` for anything else."""
    if isinstance(level, bool):  # bool is an int: True would silently mean level 1
        raise ValueError(f"log_level={level!r} is not allowed: use DEBUG, INFO, WARNING, ERROR or an int")
    if isinstance(level, int):
        return level
    number = logging.getLevelName(str(level).upper())
    if not isinstance(number, int):
        raise ValueError(f"log_level={level!r} is not one of: DEBUG, INFO, WARNING, ERROR, CRITICAL")
    return number


@contextmanager
def _harness_level(level: int, *, only_lower: bool) -> Iterator[logging.Logger]:
    """The ``harness`` logger's level is ``level`` while the block runs (``only_lower``: if that lowers it)."""
    logger = logging.getLogger(ROOT_LOGGER)
    saved = logger.level
    if not only_lower or logger.getEffectiveLevel() > level:
        logger.setLevel(level)
    try:
        yield logger
    finally:
        logger.setLevel(saved)


@contextmanager
def echoed(stream: TextIO | None, *, level: LevelName = logging.INFO) -> Iterator[None]:
    """Also write the harness's records of ``level`` and up to ``stream`` (message only) during the block.

    ``None`` changes nothing. The records still propagate to the root logger's handlers (Hydra's
    console and job log, pytest's ``caplog``), so a stream given here is a copy, never a detour.
    """
    if stream is None:
        yield
        return
    number = level_number(level)
    handler = logging.StreamHandler(stream)
    handler.setLevel(number)
    handler.setFormatter(logging.Formatter("%(message)s"))
    with _harness_level(number, only_lower=True) as logger:
        logger.addHandler(handler)
        try:
            yield
        finally:
            logger.removeHandler(handler)
            handler.flush()


@contextmanager
def shown(level: LevelName | None) -> Iterator[None]:
    """Only the harness's records of ``level`` and up, and they reach a handler, during the block.

    ``None`` leaves logging as it is. If some handler already listens (Hydra's, ``basicConfig``'s,
    pytest's), the records go there; otherwise (a fresh notebook, where Python would print
    warnings only) to ``sys.stderr``.
    """
    if level is None:
        yield
        return
    number = level_number(level)
    with _harness_level(number, only_lower=False) as logger:
        if logger.hasHandlers():
            yield
        else:
            with echoed(sys.stderr, level=number):
                yield


def to_log_files(logger: logging.Logger, message: str, *, exc_info: BaseException) -> int:
    """Hand one record with ``exc_info``'s traceback to the file handlers only (Hydra's job log), at
    whatever level: the console keeps its one line per case, the job log keeps what a bug report needs.
    Returns how many files took it (0 outside Hydra, where the caller's DEBUG record remains)."""
    record = logger.makeRecord(logger.name, logging.ERROR, "(traceback)", 0, message, (),
                               (type(exc_info), exc_info, exc_info.__traceback__))
    files = 0
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)
                files += 1
        current = current.parent if current.propagate else None
    return files
