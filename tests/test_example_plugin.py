"""The plug-in path end to end: docs/examples/attnbench_example_impl is pip-installed (into a
temporary folder, never into the environment), registers through its entry point, and runs from
the command line as ``impl=example_online``: checked against the float64 reference, then timed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from attnbench.harness import results

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "examples" / "attnbench_example_impl"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    # A copy to build from: setuptools writes build/ and *.egg-info next to the sources.
    src = tmp_path_factory.mktemp("src") / "pkg"
    subprocess.run(["cp", "-r", str(EXAMPLE), str(src)], check=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--no-index", "--target", str(target), str(src)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return target


def _env(site: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")])}


def test_the_installed_package_registers_its_implementation(site: Path) -> None:
    code = ("from attnbench.variants.registry import IMPLEMENTATIONS; i = IMPLEMENTATIONS.get('example_online'); "
            "print(type(i).__module__, i.path, i.kernel.name)")
    proc = subprocess.run([sys.executable, "-c", code], env=_env(site), cwd=site.parent, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["attnbench_example_impl", "standard", "online"]


@pytest.mark.parametrize("variant", ["gqa", "mla"])
def test_it_runs_as_impl_from_the_command_line(site: Path, tmp_path: Path, variant: str) -> None:
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "run.py", "impl=example_online", f"variant={variant}", "model=tiny",
                           "device=cpu", "measure=quick", "seq=64", "phase=both", f"hydra.run.dir={out}"],
                          cwd=ROOT, env=_env(site), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = results.load(out)
    assert sorted(rows.phase) == ["decode", "prefill"]
    assert set(rows.impl) == {"example_online"} and set(rows.status) == {"ok"}, rows[["status", "reason"]]
    assert (rows.numerics_rel_err <= rows.numerics_tol).all() and (rows.latency_ms > 0).all()
