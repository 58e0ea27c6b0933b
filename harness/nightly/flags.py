"""A row's ``flags`` (``attnbench.harness.measure.trust``) in the nightly history.

The history keeps an ``ok`` case's ``reason`` (always empty in the row) and no flags column; the
flags travel in that reason as ``flags: noisy,busy``, so the history's tables stay as they are and
histories written before keep working (their cases carry no flags). ``compare`` never uses a
flagged row as a baseline.
"""

from __future__ import annotations

from typing import Any

from attnbench.harness.measure.trust import parse

PREFIX = "flags: "


def reason_with_flags(status: str, reason: str, flags: Any) -> str:
    """What the history stores as a case's reason: an ok case's flags, or its reason as it is."""
    found = parse(flags)
    return f"{PREFIX}{','.join(found)}" if status == "ok" and found and not reason else reason


def flags_of(status: str, reason: str) -> tuple[str, ...]:
    """The flags an ok case was stored with; () for none (or a case that did not run)."""
    if status != "ok" or not reason.startswith(PREFIX):
        return ()
    return parse(reason[len(PREFIX):])
