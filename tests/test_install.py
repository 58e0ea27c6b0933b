"""attnbench installed, not run from a checkout: the wheel holds the configs and the app, and a fresh
environment outside the checkout runs ``attnbench`` and reads the model presets (from a wheel and from
an editable install)."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from attnbench.harness import results

ROOT = Path(__file__).resolve().parent.parent
# Left out of the copy that is built: outputs, caches and build leftovers (stale files in build/ would
# end up in the wheel).
_SKIP = {".git", ".venv", "build", "__pycache__", ".pytest_cache", ".benchmarks"}


def _copy_tree(dest: Path) -> Path:
    def ignore(folder: str, names: list[str]) -> list[str]:
        top = Path(folder) == ROOT
        return [n for n in names if n in _SKIP or n.endswith(".egg-info") or (top and n in ("results", "outputs"))]

    shutil.copytree(ROOT, dest, ignore=ignore)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("wheel")
    src = _copy_tree(base / "src")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "--no-index", "-w", str(base / "dist"), str(src)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return next((base / "dist").glob("attnbench-*.whl"))


def test_the_wheel_holds_the_configs_and_the_app(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"attnbench/conf/{p.relative_to(ROOT / 'conf').as_posix()}" for p in (ROOT / "conf").rglob("*.yaml")}
    assert configs and configs <= names, sorted(configs - names)
    code = {f"attnbench/{p.relative_to(ROOT).as_posix()}" for top in ("harness", "variants")
            for p in (ROOT / top).rglob("*.py") if "__pycache__" not in p.parts}
    # Data the code reads beside itself (the models state_vs_kv compares, the C++ kernels built at plan time) ships too.
    code |= {f"attnbench/{p.relative_to(ROOT).as_posix()}" for top in ("harness", "variants")
             for pattern in ("*.yaml", "*.cpp") for p in (ROOT / top).rglob(pattern)}
    assert code <= names, sorted(code - names)
    assert {"attnbench/conf/__init__.py", "attnbench/harness/__main__.py", "attnbench/harness/app/main.py"} <= names
    # One namespace: no generic top-level package (harness, variants and conf are names others use on PyPI).
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"attnbench"}, names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "attnbench = attnbench.harness.app.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def _venv(path: Path) -> Path:
    """A fresh venv that reuses this interpreter's installed dependencies (torch, hydra, ...) through a
    .pth file; attnbench itself is installed into it by the caller."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    python = path / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()] or [sysconfig.get_paths()["purelib"]]
    (Path(purelib) / "attnbench_test_deps.pth").write_text("\n".join(deps) + "\n")
    return python


def _clean_env() -> dict[str, str]:
    """No PYTHONPATH: the checkout must not shadow what was installed."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


@pytest.mark.parametrize("mode", ["wheel", "editable"])
def test_an_installed_attnbench_runs_outside_the_checkout(wheel, tmp_path, mode):
    python = _venv(tmp_path / "venv")
    target = str(wheel) if mode == "wheel" else str(_copy_tree(tmp_path / "src"))
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
           "--no-build-isolation", *(["-e"] if mode == "editable" else []), target]
    proc = subprocess.run(pip, capture_output=True, text=True, timeout=300, env=_clean_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    where = tmp_path / "src" if mode == "editable" else tmp_path / "venv"

    cwd = tmp_path / "work"
    cwd.mkdir()
    # The command as written from the wheel (every implementation); the editable install on one
    # (the install is what differs, and the others cost ~20 s more).
    few = ["impl=absorbed"] if mode == "editable" else []
    run = subprocess.run([str(python.parent / "attnbench"), "variant=mla", "seq=1k", "model=tiny", "device=cpu",
                          "measure=quick", "name=installed", *few], cwd=cwd, capture_output=True, text=True, timeout=300,
                         env=_clean_env())
    assert run.returncode == 0, run.stderr[-3000:]
    frame = results.load(cwd / "results" / "installed")
    assert set(frame["variant"]) == {"mla"} and (frame["status"] == "ok").all() and len(frame) >= 2 - len(few)

    check = ("import attnbench.variants, attnbench.harness as harness, attnbench.conf; "
             "layer = attnbench.variants.build('mla', model='deepseek_v3', device='meta'); "
             "print(type(layer).__name__); "
             "print(harness.__file__); print(attnbench.conf.__file__); "
             "import importlib.util; print([n for n in ('harness', 'variants', 'conf') if importlib.util.find_spec(n)])")
    proc = subprocess.run([str(python), "-c", check], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env=_clean_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, code_file, conf_file, generic = proc.stdout.strip().splitlines()
    assert generic == "[]", f"the install claims generic top-level names: {generic}"
    assert Path(code_file).is_relative_to(where) and Path(conf_file).is_relative_to(where), proc.stdout
