"""The acceptance steps: each a subprocess with its own time limit, so one failure stops none of the rest.

A step is data (``Step``); what it checks after it ran is a function of the step's output folder.
``plan(dry_run=...)`` substitutes ``device=cpu`` and tiny shapes, and skips what needs CUDA with the
reason, so the whole command runs in CI.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Outcome = Literal["pass", "fail", "skip", "timeout"]
PY = sys.executable
# The NVML columns a GPU row must fill (nvml_* in harness/results/schema.py).
NVML_COLUMNS = ("nvml_gpu_util_pct", "nvml_power_mean_w", "nvml_energy_per_token_j", "nvml_sm_clock_mhz",
                "nvml_mem_clock_mhz")


@dataclass(frozen=True)
class Step:
    name: str
    argv: tuple[str, ...]  # the command; empty: the check alone
    timeout_s: float
    skip: str = ""  # a reason: the step is not run
    check: Callable[[Path], str] | None = None  # "" if fine, else what is wrong; gets the run's folder


@dataclass
class Result:
    name: str
    outcome: Outcome
    seconds: float
    command: str
    detail: str = ""
    tail: list[str] = field(default_factory=list)


def run_step(step: Step, out: Path) -> Result:
    command = " ".join(step.argv)
    if step.skip:
        return Result(step.name, "skip", 0.0, command, step.skip)
    started = time.perf_counter()
    folder = out / step.name
    folder.mkdir(parents=True, exist_ok=True)
    if step.argv:
        try:
            done = subprocess.run(step.argv, capture_output=True, text=True, timeout=step.timeout_s, check=False)
        except subprocess.TimeoutExpired as error:
            tail = (error.stdout or b"").decode(errors="replace") if isinstance(error.stdout, bytes) else (error.stdout or "")
            return Result(step.name, "timeout", time.perf_counter() - started, command,
                          f"over its {step.timeout_s:g} s limit", tail.splitlines()[-20:])
        except FileNotFoundError as error:
            return Result(step.name, "fail", time.perf_counter() - started, command, str(error))
        text = done.stdout + done.stderr
        (folder / "output.txt").write_text(text)
        if done.returncode != 0:
            said = [line.strip() for line in text.splitlines() if line.startswith("error:")]  # attnbench's one line
            return Result(step.name, "fail", time.perf_counter() - started, command,
                          f"exit status {done.returncode}" + (f": {said[-1]}" if said else ""), text.splitlines()[-20:])
        tail = text.splitlines()[-5:]
    else:
        tail = []
    try:
        problem = step.check(out) if step.check is not None else ""
    except Exception as error:  # noqa: BLE001 - a check that cannot read its step's output fails that step only
        text = str(error).strip()
        problem = f"its check could not run: {type(error).__name__}: {text.splitlines()[0] if text else ''}"
    return Result(step.name, "fail" if problem else "pass", time.perf_counter() - started, command, problem, tail)


def plan(out: Path, *, dry_run: bool) -> list[Step]:
    """The steps in order; each ``attnbench`` run writes under ``out/<step>``. Budgets sum to < 8 min."""
    cuda_skip = "needs CUDA (--dry-run measures on cpu)" if dry_run else ""
    if dry_run:
        base = ("device=cpu", "dtype=float32", "model=tiny", "measure=quick", "measure.telemetry_window_s=0.1")
        # One MLA implementation and one batch: the dry run proves the
        # command's plumbing in ~1 min; a GPU run measures every implementation.
        seq_one, seqs, batches = "seq=64", "seq=32", "batch=1"
        mla_impls: tuple[str, ...] = ("impl=absorbed",)
    else:
        mla_impls = ()
        base = ("device=cuda", "dtype=bfloat16", "measure.budget_s=2", "measure.telemetry_window_s=1.0")
        seq_one, seqs, batches = "seq=32k", "seq=4k,32k", "batch=1,8"
    app = (PY, "-m", "attnbench.harness")

    def run(name: str, *extra: str) -> tuple[str, ...]:
        return (*app, *base, "phase=decode", f"hydra.run.dir={out / name}", *extra)

    mla = ("variant=mla", seq_one, *mla_impls)
    smi = shutil.which("nvidia-smi")
    return [
        Step("nvidia_smi", (smi or "nvidia-smi",), 30,
             skip="dry run" if dry_run else "" if smi else "nvidia-smi is not on PATH"),
        Step("versions", (PY, "-c", _VERSIONS), 60),
        Step("gpu_tests", (PY, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"), 150,
             skip="" if Path("tests").is_dir() else "no tests/ folder in the working directory (run from a checkout)"),
        Step("mla_32k", run("mla_32k", *mla), 60, check=_rows_ok("mla_32k", cuda=not dry_run)),
        Step("mla_32k_graph", run("mla_32k_graph", *mla, "measure.cuda_graph=true"), 45, skip=cuda_skip,
             check=_rows_ok("mla_32k_graph", cuda=True)),
        Step("mla_32k_compile", run("mla_32k_compile", "variant=mla", seq_one, "impl=absorbed", "compile=default"), 120,
             check=_rows_ok("mla_32k_compile", cuda=not dry_run)),
        # measure=quick and three impls: 36 cases inside the step's limit (the point is every path, not precision).
        Step("sweep", (*app, "-m", *base, "measure=quick", "phase=decode", "impl=sdpa,absorbed,absorbed_sdpa",
                       "variant=mha,gqa,mla", seqs, batches, f"hydra.sweep.dir={out / 'sweep'}"), 150,
             check=_rows_ok("sweep", cuda=not dry_run)),
        Step("do_bench", (PY, "-m", "attnbench.harness.selfcheck.dobench", str(out / "mla_32k_graph"),
                          str(out / "mla_32k")), 60, skip=cuda_skip or _no_triton()),
        Step("nvml_columns", (), 5, skip=cuda_skip, check=_nvml_filled),
        Step("report", (*app, "report", str(out / "sweep"), "--out", str(out / "report")), 60,
             check=lambda o: "" if any((o / "report").iterdir()) else "the report folder is empty"),
    ]


_VERSIONS = ("import platform, torch; print('python', platform.python_version()); print('torch', torch.__version__, "
             "'cuda', torch.version.cuda, 'available', torch.cuda.is_available()); "
             "[print('device', i, torch.cuda.get_device_name(i)) for i in range(torch.cuda.device_count())]; "
             "import importlib.metadata as m; [print(p, m.version(p)) for p in ('hydra-core', 'omegaconf', "
             "'nvidia-ml-py', 'pytest', 'pandas', 'pyarrow', 'seaborn') if __import__('importlib.util').util."
             "find_spec(p.replace('-core', '').replace('nvidia-ml-py', 'pynvml').replace('-', '_'))]")


def _no_triton() -> str:
    import importlib.util

    return "" if importlib.util.find_spec("triton") else "triton is not installed (do_bench comes with it)"


def _rows_ok(name: str, *, cuda: bool) -> Callable[[Path], str]:
    def check(out: Path) -> str:
        from attnbench.harness import results

        frame = results.load(out / name)
        if frame.empty:
            return "no rows written"
        bad = frame[~frame.status.isin(["ok", "skipped"])]
        if len(bad):
            return f"{len(bad)} row(s) not ok: " + "; ".join(f"{r.impl} seq={r.seq}: {r.status} {r.reason}"
                                                            for r in bad.head(3).itertuples())
        if not (frame.status == "ok").any():
            return "every case was skipped: " + frame.reason.iloc[0]
        if cuda and not frame.device.astype(str).str.startswith("cuda").all():
            return "a row ran on the CPU"
        ok = frame[frame.status == "ok"]
        if cuda and "sdpa_backend" in ok and ok.sdpa_backend.fillna("").str.contains("math").any():
            return "a case ran SDPA's math backend: " + ", ".join(sorted(set(ok[ok.sdpa_backend.str.contains(
                "math", na=False)].impl)))
        if "numerics_full_rel_err" in ok and ok.numerics_full_rel_err.isna().any():
            return "numerics_full_rel_err is empty on an ok row"
        return ""
    return check


def _nvml_filled(out: Path) -> str:
    from attnbench.harness import results

    frame = results.load(out / "mla_32k")
    if frame.empty or "status" not in frame:
        return "no rows from mla_32k to read (see that step)"
    ok = frame[frame.status == "ok"]
    empty = [c for c in NVML_COLUMNS if c not in ok or ok[c].isna().any()]
    return f"NVML columns empty: {', '.join(empty)}" if empty or ok.empty else ""
