"""attnbench's C++ kernels, compiled for this machine when a plan first needs them.

Each source here is built with the system's C++ compiler (``$CXX``, else ``c++``, ``g++`` or
``clang++``) at ``-O3 -march=native``, into a private temporary folder, and loaded with ctypes;
the folder is removed once the library is loaded. A build takes about a second and happens
once per process, during an implementation's ``plan`` (set-up, never timed). Nothing is cached on
disk, so a library built for one machine's instruction set never reaches another (a cluster's
shared home, a container image). Without a compiler an implementation that needs one declares
itself unsupported with the reason, and a sweep records that as the case's status.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import subprocess
import tempfile
from importlib import resources

FLAGS = ("-O3", "-march=native", "-std=c++17", "-fPIC", "-shared")


class BuildError(RuntimeError):
    """A native kernel could not be built here; the message says why in one line."""


def compiler() -> str | None:
    """The C++ compiler to use: ``$CXX``, else the first of c++, g++, clang++ on the PATH."""
    named = os.environ.get("CXX", "").strip()
    if named:
        return shutil.which(named)
    return next((found for name in ("c++", "g++", "clang++") if (found := shutil.which(name))), None)


def library(source: str) -> ctypes.CDLL:
    """``source`` (a file beside this module) built and loaded, once per process; ``BuildError`` if it can't be."""
    built = _build(source)
    if isinstance(built, str):
        raise BuildError(built)
    return built


def unavailable(source: str) -> str | None:
    """Why ``source`` can't be built here, or None once it is built."""
    built = _build(source)
    return built if isinstance(built, str) else None


@functools.cache  # a failure too: a sweep asks once per case, and a failing build costs as much as a good one
def _build(source: str) -> ctypes.CDLL | str:
    cxx = compiler()
    if cxx is None:
        return "no C++ compiler found (set CXX, or install g++ or clang++)"
    code = resources.files(__package__).joinpath(source).read_text()
    with tempfile.TemporaryDirectory(prefix="attnbench-native-") as folder:
        src = os.path.join(folder, source)
        with open(src, "w") as f:
            f.write(code)
        out = os.path.join(folder, source.rsplit(".", 1)[0] + ".so")
        # OpenMP where the compiler has it (GCC does; Apple's clang does not): parts of the work in parallel.
        for extra in (("-fopenmp",), ()):
            done = subprocess.run([cxx, *FLAGS, *extra, src, "-o", out], check=False, capture_output=True, text=True)
            if done.returncode == 0:
                return ctypes.CDLL(out)
        lines = [line for line in done.stderr.splitlines() if "error" in line] or done.stderr.splitlines() \
            or [f"exit status {done.returncode}"]
        return f"{os.path.basename(cxx)} could not build {source}: {lines[0].strip()}"
