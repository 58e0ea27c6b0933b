"""How every attnbench command ends when something goes wrong: one line on stderr, never a traceback.

The taxonomy, and the exit status each gets from :func:`boundary`:

- ``UserError`` (a ``ValueError``): the user's own input (a value, a flag, a file's key). The line names
  the value and what is allowed. Exit 2.
- ``SetupError``, or an ``OSError`` (disk full, read-only, a file where a folder belongs, no
  permission) and SQLite's "database is locked": the machine or a file, not the input. The line names
  the path and what to do; finished cases are already on disk (each row is written when measured). Exit 2.
- ``KeyboardInterrupt`` (Ctrl-C, SIGINT): "interrupted; finished cases are kept", with the resume
  command when the command has one. Exit 130, the shell's status for SIGINT.
- Anything else is a bug in attnbench: one line saying so and naming the file holding the traceback
  (the job log for a Hydra job). Exit 1.
"""

from __future__ import annotations

import argparse
import errno
import functools
import os
import sqlite3
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

USER_EXIT = 2
BUG_EXIT = 1
INTERRUPT_EXIT = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C


class UserError(ValueError):
    pass


class SetupError(Exception):
    """The environment, not the input: a folder that can't be written, a full disk, a locked file.
    ``str()`` is the one line (it names the path and what to do)."""


# What to do about an OSError, by errno; {path} is the file or folder the call named.
_OS_ADVICE = {
    errno.ENOSPC: "the disk is full at {path}: free space, then run the same command with resume=true "
                  "(finished cases are kept)",
    errno.EDQUOT: "the disk quota is exhausted at {path}: free space, then resume (finished cases are kept)",
    errno.EROFS: "{path} is on a read-only file system: make it writable or choose another folder "
                 "(finished cases are kept)",
    errno.EACCES: "no permission to write {path}: make it writable or choose another folder",
    errno.EPERM: "no permission to write {path}: make it writable or choose another folder",
    errno.ENOTDIR: "{path}: a file is where a folder belongs; move the file or choose another folder",
    errno.EEXIST: "{path} already exists as a file where a folder belongs; move it or choose another folder",
    errno.EISDIR: "{path} is a folder where a file belongs; choose a file name",
    errno.ENOENT: "{path} does not exist and cannot be made there (its folder is missing or is not a real "
                  "folder, such as /proc); choose another folder",
    errno.ENAMETOOLONG: "{path} is too long a name for this file system; choose a shorter one",
}


def describe_os_error(error: OSError) -> str:
    """An OSError as one line naming the path and what to do."""
    path = error.filename if error.filename is not None else "(unnamed file)"
    advice = _OS_ADVICE.get(error.errno) if error.errno is not None else None
    if advice is not None:
        return advice.format(path=path)
    what = error.strerror or _line(str(error))
    return f"cannot use {path}: {what}"


def setup_error_line(error: BaseException) -> str | None:
    """The one line for an environment error, None when ``error`` is not one."""
    if isinstance(error, SetupError):
        return str(error)
    if isinstance(error, OSError):
        return describe_os_error(error)
    if isinstance(error, sqlite3.OperationalError) and "locked" in str(error):
        return f"a database is locked by another process ({error}); retry when it has finished"
    return None


def crash_log_path(command: str) -> Path:
    """Where a bug's traceback goes when the command has no log of its own."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return Path(tempfile.gettempdir()) / f"attnbench-{command}-bug-{stamp}-{os.getpid()}.log"


def _write_traceback(error: BaseException, log: Path | None, command: str) -> Path | None:
    """Append the traceback to ``log`` (a fresh file in the temp folder when None); the file written,
    or None when none could be."""
    text = "".join(traceback.format_exception(error))
    for path in ([log] if log is not None else []) + [crash_log_path(command)]:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as handle:
                handle.write(f"{datetime.now(UTC).isoformat()} attnbench {command}: a bug\n{text}\n")
            return path
        except OSError:
            continue
    return None


def _line(text: str) -> str:
    """Exactly one line: a message that holds newlines keeps its first."""
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else "(no message)"


def report(error: BaseException, command: str, *, log: Callable[[], Path | None] | None = None,
           resume: Callable[[], str | None] | None = None) -> int:
    """Print ``error`` as one ``error:`` line on stderr and return the exit status of the taxonomy above.
    ``log`` gives the file for a bug's traceback (the job log); ``resume`` the command that resumes."""
    if isinstance(error, KeyboardInterrupt):
        hint = resume() if resume is not None else None
        line, code = "interrupted; finished cases are kept" + (f"; resume with: {hint}" if hint else ""), INTERRUPT_EXIT
    elif isinstance(error, UserError):
        line, code = str(error), USER_EXIT
    elif (setup := setup_error_line(error)) is not None:
        line, code = setup, USER_EXIT
    elif isinstance(error, ValueError):  # the commands' own checks raise ValueError for bad input too
        line, code = str(error), USER_EXIT
    else:
        where = _write_traceback(error, log() if log is not None else None, command)
        seen = f"the traceback is in {where}" if where else "no log could be written"
        line = f"a bug in attnbench {command}: {type(error).__name__}: {_line(str(error))} ({seen}); please report it"
        code = BUG_EXIT
    print(f"error: {_line(line)}", file=sys.stderr, flush=True)
    return code


@contextmanager
def boundary(command: str, *, log: Callable[[], Path | None] | None = None,
             resume: Callable[[], str | None] | None = None) -> Iterator[None]:
    """The one error boundary of a command: an exception of the body becomes one ``error:`` line (see
    :func:`report`) and ``SystemExit`` with its status. ``SystemExit`` itself passes (argparse, --help)."""
    try:
        yield
    except (Exception, KeyboardInterrupt) as error:  # noqa: BLE001 - the boundary: every exception is one line
        sys.exit(report(error, command, log=log, resume=resume))


def guarded(command: str) -> Callable[[Callable[..., int | None]], Callable[..., int]]:
    """A command's ``main(argv)`` behind the boundary: an exception becomes one line and the status is
    returned (``SystemExit`` from argparse passes, as before)."""

    def wrap(function: Callable[..., int | None]) -> Callable[..., int]:
        @functools.wraps(function)
        def main(argv: list[str] | None = None) -> int:
            try:
                return int(function(argv) or 0)
            except (Exception, KeyboardInterrupt) as error:  # noqa: BLE001 - the boundary
                return report(error, command)

        return main

    return wrap


class ArgumentParser(argparse.ArgumentParser):
    """argparse with its errors as every attnbench command prints them: one ``error:`` line, exit 2
    (argparse's own adds the usage block above it)."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {self.prog}: {message} (see --help)", file=sys.stderr)
        sys.exit(2)
