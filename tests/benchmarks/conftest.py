"""The pytest-benchmark suite is kept out of the default run: it is collected only when asked for.

    python -m pytest tests/benchmarks --benchmark-autosave            # run and save (.benchmarks/)
    python -m pytest tests/benchmarks --benchmark-compare --benchmark-compare-fail=median:5%

Asked for means a path on the command line inside this folder (``tests/benchmarks``, a file, a
``file::test[id]``), or ``--benchmark-only``. A plain ``python -m pytest`` (``testpaths = tests``)
or ``python -m pytest tests`` imports this conftest, which then ignores every file here, so no
benchmark module is imported, collected or run, and nothing is reported as skipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _asked_for(config: pytest.Config) -> bool:
    if config.getoption("benchmark_only", default=False):
        return True
    for arg in config.args:
        path = (config.invocation_params.dir / arg.split("::")[0]).resolve()
        if path == HERE or HERE in path.parents:
            return True
    return False


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if collection_path.resolve() != HERE / "conftest.py" and not _asked_for(config):
        return True
    return None  # no opinion: pytest's own rules (and --ignore) apply
