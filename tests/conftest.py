"""Shared fixtures: fresh random inputs each run, with the seed printed so a failure can be replayed."""

from __future__ import annotations

import os

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    """One intra-op thread per test process, and in every process a test starts (through the
    environment), unless OMP_NUM_THREADS says otherwise. The README's two pytest-xdist workers share
    two cores: with torch's default of a thread per core, each worker's parallel regions wait on
    threads the other worker has descheduled (whole suite on a quiet 2-core Zen 1: 12:53 -> 11:13).
    A test that needs several threads sets them itself (test_native_mla's ``threads``)."""
    if "OMP_NUM_THREADS" not in os.environ:  # set, torch has read it already
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _config_store() -> None:
    """What the app does at start-up before Hydra composes: the typed schema and one variant/impl option
    per registered name in the ConfigStore (tests compose conf/ directly)."""
    from attnbench.harness.sweep.schema import store_configs

    store_configs()


@pytest.fixture
def seed(request) -> int:
    """A new seed per test run (``ATTNBENCH_SEED`` replays one); it appears in the failure report."""
    value = int(os.environ.get("ATTNBENCH_SEED", int.from_bytes(os.urandom(4), "little")))
    torch.manual_seed(value)
    request.node.user_properties.append(("seed", value))
    print(f"seed={value}")
    return value


# The files that take a minute or more on a 2-core CPU, slowest first. They are collected first so that
# pytest-xdist (the README's `-n 2 --dist loadfile`) starts them first; otherwise a worker can pick one
# up last while the other worker sits idle.
SLOW_FIRST = ("test_predict_memory.py", "test_report.py", "test_run.py", "test_launchers.py", "test_selfcheck.py",
              "test_report_figures.py", "test_install.py", "test_api.py", "test_smollm2.py", "test_lowrank_study.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))  # stable: same order in every worker
    has_cuda = torch.cuda.is_available()
    for item in items:
        # The marker, not item.keywords: keywords hold the path's folder names too, so a checkout
        # in a folder named "gpu" would skip every test.
        if item.get_closest_marker("gpu") is not None and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU; none is present"))
