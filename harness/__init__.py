"""attnbench's harness: measurement, sweeps, results, reports.

The Python API (docs/python-api.md), imported on first use so that ``import harness`` stays cheap:

- ``harness.bench(fn, device=..., ...)``: time any zero-argument callable with the harness's timer.
- ``harness.config("variant=mla", "seq=1k", ...)``: compose a job's config as the command line would.
- ``harness.run(cfg, out=...)``: run that job and get its rows as a DataFrame.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"bench": "harness.measure.bench", "BenchResult": "harness.measure.bench",
            "config": "harness.api", "run": "harness.api"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:  # PEP 562: the export's module is imported when first asked for
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'harness' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
