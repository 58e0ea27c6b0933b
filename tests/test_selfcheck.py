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


def test_without_a_gpu_every_step_reports_and_none_crashes_the_command(tmp_path, monkeypatch, capsys):
    """The GPU run on a CPU machine: a note first, each GPU step fails with its reason, and the NVML
    check (whose rows never came) fails itself instead of ending the command in a traceback."""
    from attnbench.harness.selfcheck import steps

    def run(argv, **kwargs):  # noqa: ANN001 - every step's command fails as it does without CUDA
        return subprocess.CompletedProcess(argv, 2, "", "error: device=cuda: no CUDA device\n")

    monkeypatch.setattr(steps.subprocess, "run", run)
    monkeypatch.chdir(tmp_path)  # no tests/ folder here: gpu_tests is skipped with why
    assert main(["selfcheck", "--out", str(tmp_path / "out")]) == 1
    printed = capsys.readouterr().out
    import torch

    assert printed.startswith("note: no CUDA device here") is not torch.cuda.is_available()
    outcomes = {s["name"]: (s["outcome"], s["detail"]) for s in
                json.loads((tmp_path / "out" / "summary.json").read_text())["steps"]}
    assert outcomes["gpu_tests"] == ("skip", "no tests/ folder in the working directory (run from a checkout)")
    assert outcomes["mla_32k"] == ("fail", "exit status 2: error: device=cuda: no CUDA device")
    assert outcomes["nvml_columns"][0] == "fail" and "no rows from mla_32k" in outcomes["nvml_columns"][1]
