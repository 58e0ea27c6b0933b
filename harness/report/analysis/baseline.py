"""Speed-up and memory ratio of every measured case against a baseline case of the same setting.

The baseline of a case is the row with the baseline's variant and implementation (default: MHA,
eager) that matches it on ``JOIN_COLUMNS``: the model shape, context, batch, new tokens per step,
phase, dtype, attention kind, torch.compile mode, timing mode and L2 flush, and the device it ran
on. So a compiled case is compared with the compiled baseline, a graph-timed one with the
graph-timed baseline, and a case on one GPU never with a baseline from another.
Speed-up is ``baseline latency / latency`` (above 1: faster than the baseline); memory ratio is
``peak_mem_bytes / baseline peak_mem_bytes`` (below 1: less memory). Cases without a baseline get
NaN, and the report says how many.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from attnbench.harness.report.data import CASE_COLUMNS, DEVICE, SHAPE_COLUMNS, as_text
from attnbench.variants.registry import families

# Every identity column but the variant and implementation compared, and the device it ran on.
JOIN_COLUMNS = (*SHAPE_COLUMNS, *(c for c in CASE_COLUMNS if c not in ("variant", "impl", "model")), DEVICE)
_KEYS = ("variant", "impl")


def default_variant() -> str:
    """The variant a family declares as the baseline (``ReportHints.baseline``: MHA), the first in report order."""
    return next(family.report.baseline for family in families() if family.report.baseline is not None)


@dataclass(frozen=True)
class Baseline:
    variant: str = field(default_factory=default_variant)
    impl: str = "eager"

    def __post_init__(self) -> None:
        for key in _KEYS:
            if not getattr(self, key):
                raise ValueError(f"baseline {key}={getattr(self, key)!r} is not allowed: name one")

    @classmethod
    def parse(cls, text: str) -> Baseline:
        """``variant=mha,impl=eager`` (either key may be left out: it keeps its default)."""
        values: dict[str, str] = {}
        if not text.strip():
            raise ValueError(f"baseline {text!r} is empty; give variant=<name>, impl=<name> or both")
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = part.partition("=")
            if not sep or key.strip() not in _KEYS or not value.strip():
                raise ValueError(f"baseline part {part!r} is not one of: variant=<name>, impl=<name>")
            values[key.strip()] = value.strip()
        return cls(**values)

    def label(self) -> str:
        return f"{self.variant}/{self.impl}"


def _key(frame: pd.DataFrame) -> pd.Series:
    # Joined as text: q_rank and friends are None or NaN for some shapes, and NaN never equals NaN.
    columns = [c for c in JOIN_COLUMNS if c in frame.columns]
    return frame[columns].apply(lambda column: column.map(as_text)).agg("|".join, axis=1)


def with_ratios(ok: pd.DataFrame, baseline: Baseline) -> tuple[pd.DataFrame, list[str]]:
    """``ok`` with ``speedup`` and ``mem_ratio`` columns added; notes for the reader."""
    out = ok.copy()
    if out.empty:
        return out.assign(speedup=pd.Series(dtype=float), mem_ratio=pd.Series(dtype=float)), []
    keys = _key(out)
    is_base = (out["variant"] == baseline.variant) & (out["impl"] == baseline.impl)
    base = out[is_base].assign(_key=keys[is_base]).drop_duplicates("_key", keep="last").set_index("_key")
    base_latency = keys.map(base["latency_ms"]).astype(float)
    base_peak = keys.map(base["peak_mem_bytes"]).astype(float)
    out["speedup"] = base_latency / out["latency_ms"].astype(float)
    out["mem_ratio"] = out["peak_mem_bytes"].astype(float) / base_peak
    notes = []
    if not is_base.any():
        notes.append(f"No {baseline.label()} row in the selection: speed-up and memory ratio are left empty "
                     "(choose another with --baseline variant=...,impl=...).")
    else:
        missing = int(base_latency.isna().sum())
        if missing:
            notes.append(f"{missing} measured case(s) have no {baseline.label()} row at the same shape, context, "
                         "batch, phase, dtype, compile mode and device: their speed-up and memory ratio are empty.")
    return out, notes
