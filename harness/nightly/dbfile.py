"""The history file itself: what makes a file a history, and how it is changed without ever being torn.

**Whole-file replacement.** The documented workflow carries *one* file between nights (a CI cache
entry, an artifact). Neither of SQLite's journals survives that on its own: with the rollback
journal, a large transaction spills pages into the database file before it commits, and a commit
writes them there too, so a writer killed in either window leaves a file that is only sound
together with its ``-journal`` (which the cache does not keep): ``integrity_check`` fails and the
killed run is found ``partial``. With WAL, committed data lives in the ``-wal`` file until a
checkpoint, so a WAL not carried is lost data, and a checkpoint killed half-way tears the main
file the same way. So every change (an ingest, a verdict, a migration, ``gc``) is made to a private
copy in the same folder, in one transaction (rollback journal beside the copy, ``synchronous=FULL``),
and the copy is then fsynced and renamed over the history: ``rename`` is atomic on POSIX, so the
history file is at every instant either the old one or the new one, each complete. Writers take an
exclusive ``flock`` on ``<file>.lock`` so that two ingests cannot both start from the same copy.
Copies left by a killed writer are deleted by the next one. Readers need no lock: a reader holds the
file it opened, old or new.

**Identification.** A history carries ``PRAGMA application_id = APPLICATION_ID`` and its schema
version in ``user_version``; a version-1 file (before the id existed) is recognised by its tables.
Anything else (not SQLite at all, or another program's database) is refused with ``NotAHistory``, a
``ValueError``: the command line answers it in one line with exit status 2, never 1 (regression).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

APPLICATION_ID = 0x61744E62  # "atNb": marks the file as an attnbench history
HISTORY_TABLES = frozenset({"runs", "cases"})


class NotAHistory(ValueError):
    """The file is not an attnbench history (not SQLite, another program's database, or damaged)."""


# Seconds SQLite waits for another process's lock before giving up: long enough for a writer's commit,
# short enough that a history held open elsewhere is reported at once, not after a minute.
BUSY_TIMEOUT_S = 2


def _locked_error(path: Path, error: sqlite3.Error) -> Exception | None:
    """``SetupError`` for a history another process holds locked ("database is locked"), else None."""
    if isinstance(error, sqlite3.OperationalError) and "locked" in str(error):
        from attnbench.harness.errors import SetupError

        return SetupError(f"history {path} is locked by another process; retry when it has finished")
    return None


def schema_version(con: sqlite3.Connection, path: Path, *, newest: int) -> int:
    """The history's schema version; 0 for an empty file (a history not yet written)."""
    try:
        app_id = con.execute("PRAGMA application_id").fetchone()[0]
        version = con.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as error:  # "file is not a database", "database disk image is malformed"
        raise _locked_error(path, error) or NotAHistory(f"{path} is not an attnbench history ({error})") from None
    if app_id == 0 and version == 0 and not tables:
        return 0
    if app_id == APPLICATION_ID or (app_id == 0 and version == 1 and HISTORY_TABLES <= tables):
        if version > newest:
            raise NotAHistory(f"{path} has history schema version {version}; this attnbench reads up to "
                              f"{newest}: upgrade attnbench")
        return version
    found = ", ".join(sorted(tables)) or "none"
    raise NotAHistory(f"{path} is not an attnbench history (a SQLite file with application_id {app_id}, "
                      f"user_version {version}, tables: {found})")


def _check_file(path: Path) -> None:
    """An existing ``path`` is a regular file: the writer's atomic replace would otherwise put a
    SQLite file in place of a device (as root, ``--db /dev/null`` replaced /dev/null)."""
    if path.is_dir():
        raise NotAHistory(f"{path} is a folder, not an attnbench history file")
    if path.exists() and not path.is_file():
        raise NotAHistory(f"{path} is not a regular file (a device, a pipe or a socket), so not an attnbench "
                          "history; give a history file (e.g. results/history.sqlite)")


@contextmanager
def reading(path: Path, *, newest: int) -> Iterator[sqlite3.Connection]:
    """A connection to the history at ``path``, which must exist and be a history."""
    if not path.exists():
        raise ValueError(f"no history at {path}; ingest a run first (python -m attnbench.harness.nightly ingest ...)")
    _check_file(path)
    con = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    try:
        if schema_version(con, path, newest=newest) == 0:
            raise ValueError(f"{path} holds no runs yet; ingest a run first "
                             "(python -m attnbench.harness.nightly ingest ...)")
        yield con
    except sqlite3.DatabaseError as error:  # a damaged page found by a later query
        raise _locked_error(path, error) or NotAHistory(f"{path} is not a sound attnbench history ({error})") from None
    finally:
        con.close()


@contextmanager
def replacing(path: Path, *, newest: int, vacuum: bool = False) -> Iterator[tuple[sqlite3.Connection, int]]:
    """``(connection, schema version found)`` on a private copy of ``path`` inside one open
    transaction; on a clean exit the transaction commits and the copy replaces ``path`` atomically.
    Any exception discards the copy and leaves ``path`` untouched."""
    _check_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        for stale in path.parent.glob(f".{path.name}.*.tmp*"):  # copies of writers killed earlier
            stale.unlink(missing_ok=True)
        if path.exists():
            # Opening the original first identifies it, and lets SQLite roll back a hot journal an
            # older attnbench may have left beside it, before its bytes are copied.
            with _connection(path) as con:
                version = schema_version(con, path, newest=newest)
        else:
            version = 0
        copy = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            if path.exists():
                shutil.copyfile(path, copy)
            with _connection(copy) as con:
                con.execute("PRAGMA journal_mode=DELETE")
                con.execute("PRAGMA synchronous=FULL")
                # An upgrade rebuilds a table of the older schema: its DROP must not cascade into other tables.
                con.execute(f"PRAGMA foreign_keys={'OFF' if 0 < version < newest else 'ON'}")
                con.execute("BEGIN IMMEDIATE")
                try:
                    yield con, version
                    con.execute("COMMIT")
                except BaseException:
                    if con.in_transaction:  # some errors have rolled it back already
                        con.execute("ROLLBACK")
                    raise
                if vacuum:
                    con.execute("VACUUM")
            _fsync(copy)
            os.replace(copy, path)
            _fsync(path.parent)  # the rename itself survives a power cut
        finally:
            for leftover in (copy, copy.with_name(copy.name + "-journal")):
                leftover.unlink(missing_ok=True)


@contextmanager
def _connection(path: Path) -> Iterator[sqlite3.Connection]:
    # isolation_level=None: transactions are begun and committed explicitly.
    con = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    try:
        yield con
    except sqlite3.DatabaseError as error:
        if isinstance(error, sqlite3.IntegrityError):
            raise
        raise _locked_error(path, error) or NotAHistory(f"{path} is not a sound attnbench history ({error})") from None
    finally:
        con.close()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path.with_name(path.name + ".lock"), "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the file is closed
        yield


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
