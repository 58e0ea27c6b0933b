"""The run environment, its fingerprint, and the cached per-device ceilings."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime

import pytest
import torch

from attnbench.harness.measure import calibrate

from attnbench.harness.measure import env
from attnbench.harness.measure.calibrate import Ceilings, ceilings
from attnbench.harness.measure.env import ENV_COLUMNS, environment, fingerprint
from tests.fake_nvml import FakeNvml

TINY = 1 << 16  # copy buffer bytes for tests


def fake(copy, matmul, *, read=None, stable=True, share=0.0):
    """A stand-in for ``calibrate.measure`` returning fixed rates (quiet unless told otherwise)."""
    return lambda device, dtype, *, size_bytes: calibrate.Measurement(
        copy, copy if read is None else read, matmul, stable, share)


@pytest.fixture
def fast_calibration(monkeypatch):
    """Small matmuls and short repetitions: the tests check the plumbing, not this CPU's roof."""
    monkeypatch.setattr(calibrate, "CPU_MATMUL_SIZES", (64, 128))
    monkeypatch.setattr(calibrate, "REP_TARGET_S", 0.002)


def test_environment_has_every_column_with_sane_types():
    e = environment("cpu")
    assert tuple(e) == ENV_COLUMNS
    for key in ("env_device_name", "env_torch", "env_attnbench", "env_host", "env_cpu", "env_python",
                "env_time_utc"):
        assert isinstance(e[key], str) and e[key], key
    assert e["env_device_name"] == e["env_cpu"]
    assert e["env_torch"] == torch.__version__
    assert e["env_cuda"] == torch.version.cuda
    assert e["env_driver"] is None and e["env_device_index"] is None  # a CPU run has neither
    assert isinstance(e["env_cpu_count"], int) and e["env_cpu_count"] >= 1
    assert datetime.fromisoformat(e["env_time_utc"]).utcoffset().total_seconds() == 0
    commit = e["env_git_commit"]
    assert commit is None or (len(commit.removesuffix("-dirty")) == 40), commit


def test_git_commit_outside_a_checkout_is_none(tmp_path):
    assert env.git_commit(tmp_path / "file.py") is None


def test_git_commit_marks_a_dirty_tree(tmp_path):
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    try:
        git("init", "-q")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git is not usable here")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a")
    clean = env.git_commit(tmp_path / "a.py")
    assert clean is not None and len(clean) == 40
    (tmp_path / "a.py").write_text("x = 2\n")
    assert env.git_commit(tmp_path / "a.py") == clean + "-dirty"


def test_git_missing_is_none(monkeypatch):
    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(subprocess, "run", no_git)
    assert env.git_commit() is None


def test_driver_version_from_nvml_or_none():
    fake = FakeNvml(driver_version="535.104.05")
    assert env.driver_version(nvml=fake) == "535.104.05" and fake.refcount == 0
    assert env.driver_version(nvml=FakeNvml(init_error=12)) is None
    assert env.driver_version() is None or torch.cuda.is_available()  # real pynvml, no GPU here


def test_bad_devices_are_value_errors():
    with pytest.raises(ValueError, match="meta"):
        environment("meta")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="is_available"):
            environment("cuda")


def test_fingerprint_is_stable_and_tracks_settings_not_host_or_time():
    e = environment("cpu")
    fp = fingerprint(e, dtype="bfloat16", compile="default")
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert fingerprint(environment("cpu"), compile="default", dtype="bfloat16") == fp  # order-free, repeatable
    assert fingerprint(e, dtype="float32", compile="default") != fp
    assert fingerprint(e, dtype="bfloat16") != fp
    moved = dict(e, env_host="elsewhere", env_time_utc="1999-01-01T00:00:00+00:00", env_git_commit="abc")
    assert fingerprint(moved, dtype="bfloat16", compile="default") == fp
    assert fingerprint(dict(e, env_torch="0.0.1"), dtype="bfloat16", compile="default") != fp
    assert fingerprint(dict(e, env_cpu_count=e["env_cpu_count"] + 1), dtype="bfloat16", compile="default") != fp
    assert fingerprint(e, dtype=torch.bfloat16) == fingerprint(e, dtype="torch.bfloat16")
    with pytest.raises(ValueError, match="env lacks"):
        fingerprint({"env_host": "x"})


def test_ceilings_on_cpu_are_positive_and_cached(tmp_path, monkeypatch, fast_calibration):
    # Other engineers' tests share this CPU: call the machine quiet here (test_ceilings.py checks the
    # real load probe); this test is about the cache plumbing around a real measurement.
    monkeypatch.setattr(calibrate, "BUSY_SHARE", 1.0)
    monkeypatch.setattr(calibrate, "STABLE_REL", 10.0)
    first = ceilings("cpu", torch.float32, cache_dir=tmp_path, size_bytes=TINY)
    assert first.copy_gbps > 0 and first.read_gbps > 0 and first.matmul_tflops > 0 and first.quiet
    assert first.dtype == "float32" and first.device_name == environment("cpu")["env_device_name"]
    # one file, named by dtype and fingerprint, beside the lock; no temporary file left
    assert sorted(f.name for f in tmp_path.iterdir()) == ["calibrate-cpu.lock",
                                                          f"ceilings-float32-{first.fingerprint}.json"]

    def must_not_measure(*args, **kwargs):
        raise AssertionError("measured again although the cache holds the result")

    monkeypatch.setattr(calibrate, "measure", must_not_measure)
    assert ceilings("cpu", "float32", cache_dir=tmp_path, size_bytes=TINY) == first


def test_force_measures_again(tmp_path, monkeypatch):
    monkeypatch.setattr(calibrate, "measure", fake(1.0, 1.0))
    first = ceilings("cpu", "float32", cache_dir=tmp_path, size_bytes=TINY)
    monkeypatch.setattr(calibrate, "measure", fake(1.5, 0.25))
    again = ceilings("cpu", "float32", cache_dir=tmp_path, size_bytes=TINY, force=True)
    assert (again.copy_gbps, again.matmul_tflops) == (1.5, 0.25)
    assert again.fingerprint == first.fingerprint
    assert ceilings("cpu", "float32", cache_dir=tmp_path, size_bytes=TINY) == again, "force rewrote the cache"


def test_cache_is_keyed_by_dtype_and_size(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(calibrate, "measure", lambda device, dtype, *, size_bytes: calls.append(
        (dtype, size_bytes)) or fake(1.0, 1.0)(device, dtype, size_bytes=size_bytes))
    a = ceilings("cpu", "float32", cache_dir=tmp_path, size_bytes=TINY)
    b = ceilings("cpu", "bfloat16", cache_dir=tmp_path, size_bytes=TINY)
    c = ceilings("cpu", "bfloat16", cache_dir=tmp_path, size_bytes=2 * TINY)
    assert calls == [(torch.float32, TINY), (torch.bfloat16, TINY), (torch.bfloat16, 2 * TINY)]
    assert len({a.fingerprint, b.fingerprint, c.fingerprint}) == 3


@pytest.mark.parametrize("content", ["{not json", json.dumps({"copy_gbps": 1.0}), json.dumps([1, 2]),
                                     "wrong fields"])
def test_corrupt_cache_is_measured_again(tmp_path, monkeypatch, content):
    monkeypatch.setattr(calibrate, "measure", fake(2.0, 3.0))
    good = ceilings("cpu", "float32", cache_dir=tmp_path, size_bytes=TINY)
    path = tmp_path / f"ceilings-float32-{good.fingerprint}.json"
    path.write_text(content)
    monkeypatch.setattr(calibrate, "measure", fake(4.0, 5.0))
    with pytest.warns(RuntimeWarning, match="measuring again"):
        again = ceilings("cpu", "float32", cache_dir=tmp_path, size_bytes=TINY)
    assert (again.copy_gbps, again.matmul_tflops) == (4.0, 5.0)
    assert Ceilings(**json.loads(path.read_text())) == again


def test_cache_with_impossible_numbers_is_measured_again(tmp_path, monkeypatch):
    monkeypatch.setattr(calibrate, "measure", fake(2.0, 3.0))
    good = ceilings("cpu", "float32", cache_dir=tmp_path, size_bytes=TINY)
    path = tmp_path / f"ceilings-float32-{good.fingerprint}.json"
    path.write_text(json.dumps(dict(json.loads(path.read_text()), copy_gbps=-1.0)))
    with pytest.warns(RuntimeWarning, match="copy_gbps"):
        assert ceilings("cpu", "float32", cache_dir=tmp_path, size_bytes=TINY) == Ceilings(
            **json.loads(path.read_text()))


def test_bad_arguments_are_value_errors(tmp_path):
    with pytest.raises(ValueError, match="not a torch dtype"):
        ceilings("cpu", "float33", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="floating"):
        ceilings("cpu", torch.int32, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="size_bytes"):
        ceilings("cpu", torch.float32, cache_dir=tmp_path, size_bytes=0)
    with pytest.raises(ValueError, match="positive"):
        Ceilings(copy_gbps=0.0, read_gbps=1.0, matmul_tflops=1.0, device_name="x", dtype="float32",
                 fingerprint="0", measured_at="now")


def test_calibration_leaves_the_global_rng_alone(tmp_path, fast_calibration):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ceilings("cpu", "bfloat16", cache_dir=tmp_path, size_bytes=TINY)
    assert torch.equal(torch.rand(3), expected)


def test_cpu_matmul_size_grows_until_a_call_takes_the_target(monkeypatch):
    monkeypatch.setattr(calibrate, "CPU_MATMUL_SIZES", (32, 64, 128))
    monkeypatch.setattr(calibrate, "CPU_MATMUL_TARGET_S", 0.0)
    assert calibrate.matmul_n(torch.device("cpu"), torch.float32) == 32
    monkeypatch.setattr(calibrate, "CPU_MATMUL_TARGET_S", 1e9)
    assert calibrate.matmul_n(torch.device("cpu"), torch.float32) == 128


@pytest.mark.gpu
def test_ceilings_on_cuda(tmp_path):
    result = ceilings("cuda", torch.bfloat16, cache_dir=tmp_path)
    # loose floors any datacenter or recent consumer GPU clears; catches unit slips (ms vs s, GiB vs GB)
    assert result.copy_gbps > 50 and result.matmul_tflops > 5
    assert result.read_gbps >= 0.9 * result.copy_gbps  # a read stream is no slower than a copy
    assert result.device_name == torch.cuda.get_device_name()
    e = environment("cuda")
    assert e["env_device_index"] is not None and e["env_driver"]
