"""Names and paths of result folders, checked before anything is written under them.

``name=`` becomes a folder under ``results/``: a name is one plain folder name, so a run can never
write beside or above ``results/`` (``..``, ``/``), into ``results/`` itself (an empty name), or
under a name a shell or a tool would read as an option (a leading ``-``).
"""

from __future__ import annotations

import os
import re
import tempfile
import unicodedata
from pathlib import Path

from attnbench.harness.errors import UserError

NAME_MAX = 200  # below every common file system's 255-byte limit, with room for a suffix
_ALLOWED = "letters, digits and . _ - + = , : @ (not starting with - or ., at most 200 characters)"
_NAME = re.compile(r"[\w.+=,:@-]+")


def check_run_name(name: object) -> str:
    """``name`` if it is one plain folder name, else ``UserError`` naming it and what is allowed."""
    if not isinstance(name, str):
        raise UserError(f"name={name!r} is not text; allowed: {_ALLOWED}")
    shown = ascii(name)
    if not name.strip():
        raise UserError(f"name={shown} is empty; allowed: {_ALLOWED}")
    if any(unicodedata.category(ch).startswith("C") for ch in name):
        raise UserError(f"name={shown} holds a control character; allowed: {_ALLOWED}")
    if "/" in name or "\\" in name or name in (".", ".."):
        raise UserError(f"name={shown} is a path, not a folder name; allowed: {_ALLOWED}")
    if name.startswith(("-", ".")):
        raise UserError(f"name={shown} starts with {name[0]!r}; allowed: {_ALLOWED}")
    if len(name) > NAME_MAX or not _NAME.fullmatch(name):
        raise UserError(f"name={shown} is not allowed; allowed: {_ALLOWED}")
    return name


def check_inside(path: str | Path, root: str | Path, *, what: str = "output path") -> Path:
    """``path`` resolved (symbolic links followed) if it stays under ``root``, else ``UserError``."""
    resolved, top = Path(os.path.abspath(Path(path).expanduser())).resolve(), Path(root).expanduser().resolve()
    if resolved != top and top not in resolved.parents:
        raise UserError(f"{what} {path} is outside the results folder {root}; keep it under {root}")
    return resolved


def check_out_dir(path: str | Path, *, flag: str = "--out") -> Path:
    """``path`` if it is a folder that exists or can be made, and can be written; else ``UserError``
    naming it (a file in its place, a parent that is a file, no write permission)."""
    if not str(path).strip():  # before Path(): Path("") is the current folder
        raise UserError(f"{flag} {str(path)!r} is empty; give a folder to write to")
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder; give a folder to write to")
    existing = path
    while not existing.exists():  # the nearest folder that exists: the one a mkdir writes into
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{flag} {path}: {existing} is a file, not a folder; give a folder to write to")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: {existing} is not writable; give a folder you can write to")
    try:  # root passes os.access everywhere, yet can't make a folder in /proc or on a read-only mount
        os.rmdir(tempfile.mkdtemp(prefix=".attnbench-probe-", dir=existing))
    except OSError as error:
        raise UserError(f"{flag} {path}: a folder can't be made in {existing} ({error.strerror}); "
                        "give a folder you can write to") from None
    return path


def check_out_file(path: str | Path, *, flag: str) -> Path:
    """``path`` if a file can be written there (its folder passes ``check_out_dir``, and it is not a folder)."""
    if not str(path).strip():
        raise UserError(f"{flag} {str(path)!r} is empty; give a file name to write to")
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file name to write to")
    check_out_dir(path.parent, flag=flag)
    return path
