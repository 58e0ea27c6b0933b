"""Rows that carry a flag (``attnbench.harness.measure.trust``: noisy, fallback, busy, above_ceiling), as the
report shows them: hollow grey markers in a figure, a list under it, a dagger in a table. Never
silently mixed with clean rows, never left out either: a reader sees the number and its doubt."""

from __future__ import annotations

import math

import pandas as pd

from attnbench.harness.text.label import case_label
from attnbench.harness.measure.trust import parse

FLAGGED_GID = "flagged"  # marks the hollow markers of flagged rows (tests find them by it)
FLAGGED_EDGE = "0.55"  # grey: a flagged point reads as doubtful beside its series' solid markers
DAGGER = "†"
MAX_LISTED = 12  # rows named under a figure; the rest are counted


def mask(rows: pd.DataFrame) -> pd.Series:
    """True where a row carries any flag (False for rows written before the column)."""
    if "flags" not in rows.columns:
        return pd.Series(False, index=rows.index)
    return rows["flags"].map(lambda v: bool(parse(v))).astype(bool)


def _describe(row: pd.Series) -> str:
    flags = list(parse(row.get("flags")))
    ci = row.get("latency_ci_rel")
    if "noisy" in flags and ci is not None and not pd.isna(ci):
        flags[flags.index("noisy")] = "noisy, no CI" if math.isinf(float(ci)) else f"noisy +-{float(ci):.0%}"
    return f"{case_label(row.to_dict())} ({', '.join(flags)})"


def listing(rows: pd.DataFrame, *, what: str = "Flagged rows (hollow grey markers)") -> str:
    """One sentence naming the flagged rows among ``rows`` and their flags; '' when none."""
    flagged = rows[mask(rows)]
    if flagged.empty:
        return ""
    flagged = flagged.drop_duplicates(subset=[c for c in ("case_id", "device") if c in flagged.columns])
    named = [_describe(row) for _, row in flagged.head(MAX_LISTED).iterrows()]
    more = len(flagged) - len(named)
    return f"{what}: {'; '.join(named)}" + (f"; and {more} more." if more else ".")


def daggered(labels: pd.Series, rows: pd.DataFrame) -> pd.Series:
    """``labels`` with a dagger where the row is flagged."""
    flagged = mask(rows).reindex(labels.index, fill_value=False)
    return labels.where(~flagged, labels.astype(str) + f" {DAGGER}")


def with_listing(caption: str, rows: pd.DataFrame) -> str:
    """``caption``, then the list of the flagged rows it draws (if any)."""
    listed = listing(rows)
    return f"{caption} {listed}" if listed else caption
