"""The GPU acceptance command's CPU dry run passes in CI-like conditions (issue 15, item 12)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from attnbench.harness.app.main import main

ROOT = Path(__file__).resolve().parents[1]


def test_dry_run_passes_and_writes_its_summary(tmp_path):
    # CI-like: no GPU, one thread, no user cache; compile is left out here for time (test_run compiles).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "attnbench.harness.selfcheck", "--dry-run", "--out", str(tmp_path),
                           "--skip", "mla_32k_compile"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    outcomes = {s["name"]: (s["outcome"], s["detail"]) for s in summary["steps"]}
    assert summary["dry_run"] is True
    assert outcomes["mla_32k"][0] == outcomes["sweep"][0] == outcomes["report"][0] == outcomes["gpu_tests"][0] == "pass"
    for name in ("mla_32k_graph", "do_bench", "nvml_columns"):
        assert outcomes[name] == ("skip", "needs CUDA (--dry-run measures on cpu)")
    assert "| sweep | pass |" in (tmp_path / "summary.md").read_text()


def test_an_unknown_step_is_a_one_line_usage_error(tmp_path, capsys):
    assert main(["selfcheck", "--dry-run", "--out", str(tmp_path), "--skip", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --skip 'nope' is not a step; valid: nvidia_smi, versions, gpu_tests,")
    assert err.count("\n") == 1
