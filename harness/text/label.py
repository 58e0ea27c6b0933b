"""A case's label as a person reads it, from its columns: below measurement, results, nightly and reports,
which all name cases the same way."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from attnbench.harness.text.units import format_size


def case_label(row: Mapping[str, Any]) -> str:
    """The case as a person reads it, from its columns (a result row or ``Case.columns()``): the one
    label of progress lines, plans, merges and the nightly history."""
    def value(key: str) -> Any:
        v = row.get(key)
        return None if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else v

    compile_mode = value("compile")
    comp = f"+compile:{compile_mode}" if compile_mode not in (None, "none") else ""
    decode_len = value("decode_len")
    steps = f" L={int(decode_len)}" if value("phase") == "decode" and decode_len not in (None, 1) else ""
    seq_lens, page_size = value("seq_lens"), value("page_size")
    ragged = f" seq_lens={','.join(format_size(int(n)) for n in str(seq_lens).split(','))}" if seq_lens else ""
    paged = f" page_size={int(page_size)}" if page_size is not None else ""
    seq = value("seq")
    seq_text = format_size(int(seq)) if seq is not None else "?"
    batch = value("batch")
    # Plain timing (cpu_wall, cuda_events) is the default and goes unsaid; a graph, per-call timing or a
    # flushed L2 is said.
    timed = f" {value('timing')}" if value("timing") in ("cuda_graph", "cuda_events_per_call") else ""
    flush = " l2_flush" if value("l2_flush") is True or value("l2_flush") == 1 else ""
    return (f"{value('variant')}/{value('impl')}{comp} {value('phase')}{steps} seq={seq_text}{ragged}{paged} "
            f"batch={batch if batch is None else int(batch)} {value('dtype')}{timed}{flush}")
