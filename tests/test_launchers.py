"""Sweeps past one process: Hydra's joblib and submitit_local launchers give the same result set as
a serial sweep; a killed sweep resumes with no case lost or measured twice; merging refuses a case
measured twice; the GPU pinning keeps one job per GPU (fake GPUs on CPU)."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from attnbench.harness import results

from attnbench.harness.sweep import overrides

from attnbench.harness.results import merge

from attnbench.harness.sweep import pinning

from attnbench.harness.sweep import status
from attnbench.harness.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
# The same sweep through every launcher: 2 jobs of one case (each job a process under joblib and
# submitit: more cost time, not coverage). The killed sweep: 4 jobs of two cases, so that a job can
# die between its cases. One torch thread per process: parallel jobs share 2 cores.
SWEEP = ["-m", "experiment=smoke", "measure.calibrate=false", "variant=mha,mla", "impl=eager", "phase=decode",
         "seq=32"]
NUM_JOBS, NUM_CASES = 2, 2
KILLED_SWEEP = [*SWEEP[:-2], "phase=both", "seq=32,64"]
NUM_KILLED_CASES = 8
LAUNCHERS = {
    "basic": [],
    "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    "submitit_local": ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=3"],
}
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _installed(module: str) -> bool:
    # find_spec("a.b") imports "a" and raises ModuleNotFoundError when "a" itself is missing (no
    # hydra_plugins package at all): that must skip these tests, not stop collection (issue 15, item 10).
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


PLUGINS = all(_installed(m) for m in set(overrides.LAUNCHER_PLUGINS.values()))
needs_plugins = pytest.mark.skipif(not PLUGINS, reason="launcher plugins missing: pip install -e '.[test]'")


def _run(args: list[str], *, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=ENV)


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> dict[str, Path]:
    """The same sweep through each launcher, the three at once (the slow part of this file, run once)."""
    base = tmp_path_factory.mktemp("sweeps")
    roots = {name: base / name for name in LAUNCHERS}
    procs = {name: subprocess.Popen([sys.executable, "run.py", *SWEEP, *launcher, f"hydra.sweep.dir={roots[name]}"],
                                    cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
             for name, launcher in LAUNCHERS.items()}
    for name, proc in procs.items():
        _, stderr = proc.communicate(timeout=240)
        assert proc.returncode == 0, f"{name}: {stderr[-3000:]}"
    return roots


def _outcome(frame: pd.DataFrame) -> set[tuple[str, str]]:
    return set(zip(frame["case_id"], frame["status"], strict=True))


@needs_plugins
@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_launcher_sweep_equals_serial_sweep(sweeps, launcher):
    serial = merge.merge([sweeps["basic"]]).frame
    parallel = merge.merge([sweeps[launcher]]).frame
    assert len(serial) == NUM_CASES and (serial["status"] == "ok").all()
    assert _outcome(parallel) == _outcome(serial), "same cases, same statuses"
    assert set(parallel["launcher"]) == {launcher} and set(serial["launcher"]) == {"basic"}
    assert set(parallel["env_host"]) == {socket.gethostname()}
    assert "env_device_index" in parallel and parallel["env_device_index"].isna().all()  # CPU: no device index
    assert sorted(set(parallel["job_num"])) == list(range(NUM_JOBS))
    for row in parallel.itertuples():  # each job wrote only under its own folder
        assert Path(row.job_dir).name == str(row.job_num)
    report = status.status(sweeps[launcher])
    assert report.complete and len(report.cases) == NUM_CASES and report.counts() == {"ok": NUM_CASES}


@needs_plugins
@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_every_launcher_ends_its_sweep_with_one_summary_table(sweeps, launcher):
    # The callback runs in the launching process, after the last job, whoever ran the jobs.
    table = pd.read_csv(sweeps[launcher] / "summary.csv")
    assert sorted(table["job_num"]) == list(range(NUM_JOBS)) and (table["status"] == "ok").all()
    assert f"{NUM_CASES} cases: {NUM_CASES} ok." in (sweeps[launcher] / "summary.md").read_text()


@needs_plugins
def test_merge_refuses_a_case_measured_in_two_sweeps(sweeps, tmp_path, capsys):
    a, b, out = sweeps["basic"], sweeps["joblib"], tmp_path / "merged"
    assert merge.main([str(a), str(b), "--out", str(out)]) == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("error: duplicate case ") and stderr.count("\n") == 1, stderr
    assert str(a) in stderr and str(b) in stderr and "--prefer newest" in stderr
    assert "(1 more duplicate case)" in stderr
    assert not out.exists(), "nothing written"

    assert merge.main([str(a), str(b), "--out", str(out), "--prefer", str(b)]) == 0
    merged = results.load(out)
    assert len(merged) == NUM_CASES and set(merged["launcher"]) == {"joblib"}
    manifest = json.loads((out / merge.MANIFEST).read_text())
    assert [s["path"] for s in manifest["sources"]] == [str(a), str(b)]
    assert len(manifest["duplicates_resolved"]) == NUM_CASES


@needs_plugins
def test_killed_joblib_sweep_resumes_without_loss_or_repeat(tmp_path):
    root = tmp_path / "sweep"
    args = ["run.py", *KILLED_SWEEP, *LAUNCHERS["joblib"], f"hydra.sweep.dir={root}"]
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env=ENV)
    deadline = time.time() + 120
    while time.time() < deadline and len(results.row_files([root]) if root.exists() else []) < 3:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its workers, mid-sweep
    proc.wait()
    time.sleep(0.5)
    before = results.load(root, attempts=True)
    assert 3 <= len(before) < NUM_KILLED_CASES, "the kill should land mid-sweep"
    measured = ["case_id", "finished_at", "latency_ms"]

    report = status.status(root)  # the killed jobs' cases are missing, not results
    assert not report.complete and len(report.cases) == NUM_KILLED_CASES
    assert len(report.missing) == NUM_KILLED_CASES - len(before)
    assert status.main([str(root)]) == 1
    command = shlex.split(report.resume_command)
    assert command[:4] == ["python", "-m", "attnbench.harness", "-m"] and command[-1] == "resume=true"

    resumed = _run(command[1:])  # the command status printed, as a user would paste it
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("already measured (resume)") == len(before), "skips exactly the finished cases"
    after = results.load(root, attempts=True)
    assert len(after) == NUM_KILLED_CASES and after["case_id"].is_unique, "each case once: none lost, none twice"
    assert (after["status"] == "ok").all() and set(after["launcher"]) == {"joblib"}
    # Finished rows are kept as measured (a job that ends packs them into one file: harness.results.compact).
    assert len(before[measured].merge(after[measured])) == len(before), "finished rows untouched"
    assert status.status(root).complete and status.main([str(root)]) == 0


# --- merge rules on hand-made rows (fast) ---

def _row(case_id: str, status_: str, *, at: int, **extra) -> dict:
    return {"case_id": case_id, "status": status_, "reason": "" if status_ == "ok" else "injected", "variant": "mha",
            "impl": "eager", "compile": "none", "phase": "decode", "seq": 32, "batch": 1, "decode_len": 1,
            "dtype": "float32", "model": "tiny", "run_root": "r", "finished_at": at, "launcher": "basic", **extra}


def test_a_resumed_failure_then_ok_is_one_case_not_a_duplicate(tmp_path):
    results.write_row(tmp_path / "a" / "0", _row("c1", "error", at=1))
    results.write_row(tmp_path / "a" / "1", _row("c1", "ok", at=2))
    results.write_row(tmp_path / "a" / "1", _row("c2", "oom", at=3))
    frame = merge.merge([tmp_path / "a"]).frame
    assert dict(zip(frame.case_id, frame.status, strict=True)) == {"c1": "ok", "c2": "oom"}


def test_two_jobs_of_one_sweep_with_the_same_ok_case_are_a_duplicate(tmp_path):
    results.write_row(tmp_path / "a" / "0", _row("c1", "ok", at=1))
    results.write_row(tmp_path / "a" / "3", _row("c1", "ok", at=2))
    with pytest.raises(UserError, match=r"^duplicate case mha/eager decode seq=32 batch=1 float32 \[c1\]: "
                                         r"ok rows in .*/a/0 and .*/a/3; keep one with --prefer"):
        merge.merge([tmp_path / "a"])
    kept = merge.merge([tmp_path / "a"], prefer="newest").frame
    assert len(kept) == 1 and kept.iloc[0].finished_at == pd.Timestamp(2, unit="s", tz="UTC")


def test_merge_rejects_overlapping_sources_and_output(tmp_path):
    results.write_row(tmp_path / "a" / "0", _row("c1", "ok", at=1))
    with pytest.raises(UserError, match="overlap"):
        merge.merge([tmp_path / "a", tmp_path / "a" / "0"])
    with pytest.raises(UserError, match="--out .* overlaps source"):
        merge.merge([tmp_path / "a"], out=tmp_path / "a" / "merged")
    assert merge.main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "m")]) == 2


# --- pinning: fake GPUs, real processes ---

_WORKER = textwrap.dedent("""
    import json, sys, time
    from attnbench.harness.sweep.pinning import pinned_device
    lock_dir, out, jobs, hold = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    with open(out, "w") as f:
        for _ in range(jobs):
            with pinned_device("auto", lock_dir=lock_dir, gpu_ids=["fake-0", "fake-1"], log=sys.stderr) as dev:
                start = time.monotonic()
                time.sleep(hold)
                f.write(json.dumps({"device": dev, "start": start, "end": time.monotonic()}) + "\\n")
""")


def _contend(tmp_path: Path, *, num_workers: int, jobs: int, hold: float) -> list[list[dict]]:
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(tmp_path / "locks"), str(tmp_path / f"w{i}.jsonl"),
                               str(jobs), str(hold)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
             for i in range(num_workers)]
    for proc in procs:
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    return [[json.loads(line) for line in (tmp_path / f"w{i}.jsonl").read_text().splitlines()]
            for i in range(num_workers)]


def _assert_never_shared(runs: list[list[dict]]) -> None:
    by_device: dict[str, list[tuple[float, float]]] = {}
    for worker in runs:
        for job in worker:
            by_device.setdefault(job["device"], []).append((job["start"], job["end"]))
    assert set(by_device) <= {"cuda:0", "cuda:1"}
    for spans in by_device.values():
        spans.sort()
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:])), "a GPU held twice at once"


def test_one_worker_per_gpu_keeps_its_gpu_and_both_gpus_work(tmp_path):
    runs = _contend(tmp_path, num_workers=2, jobs=4, hold=0.2)
    _assert_never_shared(runs)
    devices = [{job["device"] for job in worker} for worker in runs]
    assert all(len(d) == 1 for d in devices), "each worker stays on its GPU"
    assert devices[0] != devices[1], "no GPU idle while the other worker has jobs"


def test_more_workers_than_gpus_wait_instead_of_sharing(tmp_path):
    runs = _contend(tmp_path, num_workers=4, jobs=2, hold=0.2)
    _assert_never_shared(runs)
    assert sum(len(worker) for worker in runs) == 8
    assert {job["device"] for worker in runs for job in worker} == {"cuda:0", "cuda:1"}


def test_a_killed_job_releases_its_gpu(tmp_path):
    code = ("import sys, time; from attnbench.harness.sweep.pinning import pinned_device\n"
            "with pinned_device('cuda', lock_dir=sys.argv[1], gpu_ids=['fake-0']) as dev:\n"
            "    print(dev, flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    assert holder.stdout.readline().strip() == "cuda:0"
    assert pinning.try_lock(tmp_path, 0, "fake-0") is None, "held by the running job"
    holder.kill()
    holder.wait()
    lock = pinning.try_lock(tmp_path, 0, "fake-0")
    assert lock is not None, "the kernel dropped the dead job's lock"
    lock.release()


@pytest.mark.parametrize(("device", "gpu_ids"), [("cpu", ["fake-0"]), ("cuda:1", ["fake-0", "fake-1"]),
                                                 ("auto", [])])
def test_only_auto_and_cuda_are_pinned_and_only_where_gpus_are(tmp_path, device, gpu_ids):
    with pinning.pinned_device(device, lock_dir=tmp_path, gpu_ids=gpu_ids) as pinned:
        assert pinned == device
    assert not list(tmp_path.glob("*.lock"))


@needs_plugins
def test_the_gpus_launcher_preset_composes():
    pinning.register_resolvers()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=gpus"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
    assert cfg.hydra.launcher.n_jobs == pinning.num_gpus() >= 1
    assert int(cfg.hydra.launcher.batch_size) == 1, "one job per dispatch: no worker holds a queue of jobs"


def test_a_launcher_without_its_plugin_is_one_line(monkeypatch):
    monkeypatch.setitem(overrides.LAUNCHER_PLUGINS, "joblib", "hydra_plugins.not_installed_launcher")
    for name in ("joblib", "gpus"):  # the preset extends joblib
        with pytest.raises(UserError, match=rf"^hydra/launcher={name} needs the launcher plugins: pip install"):
            overrides.check_overrides(["-m", f"hydra/launcher={name}", "variant=mha"], CONF)


@needs_plugins
def test_the_documented_slurm_overrides_compose():
    slurm = ["hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_task=1", "hydra.launcher.cpus_per_task=8",
             "hydra.launcher.timeout_min=240", "hydra.launcher.array_parallelism=16"]
    assert all(o in (ROOT / "docs" / "large-sweeps.md").read_text() for o in slurm)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=submitit_slurm", *slurm], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert (launcher.partition, launcher.gpus_per_task, launcher.timeout_min, launcher.array_parallelism) == (
        "gpu", 1, 240, 16)
    assert launcher.submitit_folder.endswith("/.submitit/%j")  # logs beside the sweep's results
