"""attnbench's harness: measurement, sweeps, results, reports.

The Python API (docs/python-api.md), imported on first use so that ``from attnbench import harness`` stays cheap:

- ``attnbench.harness.bench(fn, device=..., ...)``: time any zero-argument callable with the harness's timer.
- ``attnbench.harness.config("variant=mla", "seq=1k", ...)``: compose a job's config as the command line would.
- ``attnbench.harness.run(cfg, out=...)``: run that job and get its rows as a DataFrame.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"bench": "attnbench.harness.measure.bench", "BenchResult": "attnbench.harness.measure.bench",
            "config": "attnbench.harness.api", "run": "attnbench.harness.api"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:  # PEP 562: the export's module is imported when first asked for
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'attnbench.harness' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
