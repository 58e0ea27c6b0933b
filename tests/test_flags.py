"""Flags on rows (harness.measure.trust): a noisy row is flagged and measured again once at the job's
end, a warning inside a case reaches its row and the job log, a fallback warning and a high load
flag the row, and the sweep summary, the report's figures and tables and nightly show the flags."""

from __future__ import annotations

import contextlib
import io
import logging
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest

from attnbench.harness import results
from attnbench.harness.measure import cpuload, runner, trust
from attnbench.harness.measure.runner import RunContext, run_case
from attnbench.harness.measure.stats import summarize
from attnbench.harness.measure.timer import Measurement
from attnbench.harness.sweep.job import measure_settings, run_job
from attnbench.harness.sweep.plan import plan_cases
from tests.nightly_rows import lognormal_samples, row as nightly_row, write_run
from tests.test_run import _job_cfg
from attnbench.variants.implementation import KernelImplementation
from attnbench.variants.kernels.eager import EagerKernel
from attnbench.variants.registry import IMPLEMENTATIONS

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "report_sweep"
NOISY = (1.0, 1.0, 5.0, 9.0, 1.0, 20.0, 1.0, 1.0, 3.0)  # a median of 1 ms with a CI far over 5%
TIGHT = (1.0,) * 20
NOISIER = (1.0, 2.0, 1.0, 40.0, 1.0, 50.0, 60.0, 1.0, 70.0)  # a wider CI than NOISY's


@pytest.fixture
def quiet(monkeypatch):
    """A machine with no other load: only the flags under test appear (this one may be busy)."""
    monkeypatch.setattr(trust, "load_per_cpu", lambda: 0.0)
    monkeypatch.setattr(cpuload, "others_share", _share(0.0))


def _share(value: float | None):
    """A stand-in for cpuload.others_share whose block always reports ``value``."""

    @contextlib.contextmanager
    def others_share():
        share = cpuload.Share()
        yield share
        share.value = value

    return others_share


def _fake_measure(monkeypatch, *samples: tuple[float, ...]) -> list[int]:
    """runner.measure returns these samples, one tuple per call, in order; returns the call counter."""
    calls: list[int] = []

    def measure(step, timer, settings, *, first_call_ms=None):  # noqa: ANN001
        step()
        taken = samples[len(calls)]
        calls.append(1)
        return Measurement(first_call_ms=first_call_ms or 1.0, warmup_reps=0, samples_ms=taken, stop_reason="budget",
                           stats=summarize(taken, settings.confidence), loop_wall_s=sum(taken) / 1e3,
                           warmup_wall_s=0.0, timed_s=sum(taken) / 1e3)

    monkeypatch.setattr(runner, "measure", measure)
    return calls


def _mla_decode():
    return _job_cfg(variant="mla", impl="absorbed", phase="decode")


@pytest.mark.parametrize(("again", "kept", "flags"), [(TIGHT, TIGHT, ""), (NOISIER, NOISY, "noisy")])
def test_a_noisy_row_is_measured_again_once_at_the_end_and_keeps_the_tighter_ci(again, kept, flags, tmp_path,
                                                                               monkeypatch, quiet):
    calls = _fake_measure(monkeypatch, NOISY, again)
    log = io.StringIO()
    run_job(_mla_decode(), job_dir=tmp_path, root=tmp_path, log=log)
    assert len(calls) == 2, "measured once, then once again: never a third time"
    (path,) = results.row_files([tmp_path])  # the first row's file is replaced, not kept beside it
    row = results.load(tmp_path).iloc[0]
    assert row.remeasured and row["flags"] == flags and tuple(row.samples_ms) == kept
    assert "measured again" in log.getvalue()
    assert ("1 row flagged: 1 noisy." in log.getvalue()) == bool(flags)


def test_a_clean_row_is_not_measured_again(tmp_path, monkeypatch, quiet):
    calls = _fake_measure(monkeypatch, TIGHT)
    run_job(_mla_decode(), job_dir=tmp_path, root=tmp_path, log=io.StringIO())
    row = results.load(tmp_path).iloc[0]
    assert len(calls) == 1 and row["flags"] == "" and not row.remeasured


class _Warns:
    """The eager kernel, saying something on the way (as torch does when it changes path)."""

    dense_causal = True

    def __init__(self, how: str, message: str) -> None:
        self.how, self.message = how, message

    def __call__(self, q, k, v, *, scale, mask):  # noqa: ANN001
        if self.how == "warning":
            warnings.warn(self.message, UserWarning, stacklevel=1)
        else:  # dynamo's own logger, as its recompile-limit message is written
            logging.getLogger("torch._dynamo.convert_frame").warning(self.message)
        return EagerKernel()(q, k, v, scale=scale, mask=mask)


def _warning_case(monkeypatch, how: str, message: str):
    IMPLEMENTATIONS.names()  # discover the built-ins first
    impl = KernelImplementation(name="test_warns", path="standard", kernel=_Warns(how, message),
                                description="warns on every call")
    monkeypatch.setitem(IMPLEMENTATIONS._items, impl.name, impl)
    cfg = _job_cfg(variant="mha", impl="eager", phase="decode")
    cfg.impl = "test_warns"
    return cfg


def test_a_warning_inside_a_step_lands_in_the_row_and_the_job_log(tmp_path, monkeypatch, quiet):
    cfg = _warning_case(monkeypatch, "warning", "attnbench test: a harmless note (injected)")
    log = io.StringIO()
    row = run_job(cfg, job_dir=tmp_path, root=tmp_path, log=log).iloc[0]
    assert row.status == "ok", row.reason
    assert "UserWarning: attnbench test: a harmless note (injected) (x" in row.warnings  # counted, once listed
    assert len(row.warnings) <= trust.WARNINGS_MAX_CHARS
    assert "attnbench test: a harmless note (injected)" in log.getvalue()
    assert "fallback" not in row["flags"] and row.fallback_reason == ""


@pytest.mark.parametrize(("how", "message"), [
    ("warning", "flex_attention called without torch.compile() - this will use an unfused implementation"),
    ("log", "torch._dynamo hit config.recompile_limit (8)"),
])
def test_a_fallback_message_flags_the_row(how, message, monkeypatch, quiet):
    cfg = _warning_case(monkeypatch, how, message)
    (case,) = plan_cases(cfg)
    row = run_case(case, RunContext(settings=measure_settings(cfg["measure"])))
    assert row["status"] == "ok" and "fallback" in row["flags"].split(",")
    assert message in row["fallback_reason"] and message in row["warnings"]


@pytest.mark.parametrize(("load", "busy"), [(5.0, True), (0.1, False), (None, False)])
def test_a_high_load_flags_the_row_busy(load, busy, monkeypatch):
    monkeypatch.setattr(runner, "measure", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("not timed")))
    (case,) = plan_cases(_mla_decode())
    row = run_case(case, RunContext(settings=measure_settings(_mla_decode()["measure"]), load=lambda: load,
                                    others=_share(0.0)))
    assert row["status"] == "error"  # failed rows keep their flags: a busy machine may explain them
    assert ("busy" in row["flags"].split(",")) is busy and row["load_start"] == row["load_end"] == load


@pytest.mark.parametrize(("share", "busy"), [(0.6, True), (0.1, False), (None, False)])
def test_others_taking_our_cpus_during_the_case_flag_it_busy(share, busy, monkeypatch):
    """The load average lags by a minute; what others took during the case itself flags it at once."""
    monkeypatch.setattr(runner, "measure", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("not timed")))
    monkeypatch.setattr(runner.torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(cpuload, "cpus", lambda: {0, 1})
    (case,) = plan_cases(_mla_decode())
    row = run_case(case, RunContext(settings=measure_settings(_mla_decode()["measure"]), load=lambda: 0.0,
                                    others=_share(share)))
    assert ("busy" in row["flags"].split(",")) is busy and row["others_cpu_share"] == share


def test_a_share_counts_only_beyond_the_cpus_our_threads_leave_free():
    assert trust.is_crowded(0.5, own_threads=2, cpus=2)  # half our two cores taken: our 2 threads wait
    assert not trust.is_crowded(0.5, own_threads=1, cpus=2)  # one thread of ours: the other core was free
    assert trust.is_crowded(0.8, own_threads=1, cpus=2)
    assert not trust.is_crowded(None, own_threads=2, cpus=2)


def test_a_real_process_burning_a_cpu_shows_in_the_share():
    """A busy loop in another process for 1 s: at least a quarter of our CPUs (all of one of ours
    at 2 CPUs; with more CPUs, the loop's one CPU is a smaller share, so the bound is 1 / CPUs)."""
    among = cpuload.cpus()
    loop = "import time\nend = time.time() + 3\nwhile time.time() < end: pass"
    burner = subprocess.Popen([sys.executable, "-c", loop])
    try:
        time.sleep(0.3)  # the interpreter has started and spins
        with cpuload.others_share() as share:
            time.sleep(1.0)
    finally:
        burner.kill()
        burner.wait()
    assert share.value is not None and share.value >= 0.8 / len(among)


def test_busy_takes_this_process_own_threads_out_of_the_load():
    assert not trust.is_busy(1.0, own_threads=2, cpus=2)  # this process alone keeps two CPUs busy
    assert trust.is_busy(2.0, own_threads=2, cpus=2)
    assert trust.flags({"status": "ok", "latency_ci_rel": float("inf")}, target_ci_rel=0.05, fallback=True,
                       busy=True, above_ceiling=True) == "noisy,fallback,busy,above_ceiling"
    assert trust.flags({"status": "ok", "latency_ci_rel": 0.5}, target_ci_rel=0.0, fallback=False, busy=False,
                       above_ceiling=False) == ""  # target 0: the CI rule is off, so nothing is over it


def _flagged_fixture(tmp_path: Path) -> Path:
    """The report fixture's rows, two of them flagged, written as a run."""
    rows = results.load(FIXTURE)
    decode = (rows["status"] == "ok") & (rows["phase"] == "decode") & (rows["batch"] == 1)  # the drawn slice
    for (variant, impl, seq), flags in ((("mha", "eager", 128), "noisy,busy"), (("mla", "absorbed", 256), "fallback")):
        rows.loc[decode & (rows["variant"] == variant) & (rows["impl"] == impl) & (rows["seq"] == seq), "flags"] = flags
    for record in rows.to_dict("records"):
        results.write_row(tmp_path, record)
    return tmp_path


def test_old_row_files_load_with_empty_flags():
    rows = results.load(FIXTURE)
    assert rows["flags"].isna().all() and rows["remeasured"].isna().all() and rows["load_start"].isna().all()


def test_the_sweep_summary_shows_the_flags(tmp_path):
    from attnbench.harness.sweep.summary import summarize

    text = summarize(_flagged_fixture(tmp_path)).markdown()
    assert "2 rows flagged: 1 noisy, 1 fallback, 1 busy." in text
    header = next(line for line in text.splitlines() if line.startswith("| ") and "status" in line)
    assert "flags" in header and "noisy,busy" in text


def test_a_report_figure_draws_a_flagged_row_hollow_and_lists_it(tmp_path):
    from attnbench.harness.report import figures, flagged
    from attnbench.harness.report.analysis.baseline import Baseline, with_ratios
    from attnbench.harness.report.analysis.capacity import RESERVE
    from attnbench.harness.report.data import prepare
    from attnbench.harness.report.tables.views import cases_table

    ok, _ = with_ratios(prepare(results.load(_flagged_fixture(tmp_path))).ok, Baseline())
    drawn = figures.draw("latency", figures.FigureInput(ok=ok, capacity=pd.DataFrame(), budget_bytes=None,
                                                       reserve=RESERVE))
    hollow = [line for ax in drawn.figure.axes for line in ax.get_lines() if line.get_gid() == flagged.FLAGGED_GID]
    assert hollow and all(line.get_markerfacecolor() == "none" for line in hollow)
    shown = [row for _, row in ok[flagged.mask(ok)].iterrows()]
    points = {(float(x), float(y)) for line in hollow for x, y in zip(*line.get_data(), strict=True)}
    assert any((float(r.seq), float(r.latency_ms)) in points for r in shown)
    assert "Flagged rows (hollow grey markers):" in drawn.caption
    table = cases_table(ok, baseline_label="mha/eager")
    assert table.shown["variant/impl"].str.endswith(flagged.DAGGER).sum() == 2 and flagged.DAGGER in table.caption


def _compared(tmp_path: Path, runs: list[list[dict]]):
    """The nightly comparison of the last of ``runs`` (each a run's rows, a day apart) against the first."""
    from attnbench.harness.nightly.compare import compare
    from attnbench.harness.nightly.ingest import read_run
    from attnbench.harness.nightly.store import History

    history = History(tmp_path / "h.sqlite")
    ids = []
    for i, rows in enumerate(runs):
        run, cases = read_run(write_run(tmp_path / f"r{i}", rows, time_utc=f"2026-01-0{i + 1}T00:00:00+00:00"),
                              commit=f"c{i}")
        ids.append(history.add_run(run, cases))
    base, new = history.run(ids[0]), history.run(ids[-1])
    return compare(new, base, history.cases(new.run_id), history.cases(base.run_id))


def test_nightly_never_judges_against_a_flagged_baseline_row(tmp_path):
    from attnbench.harness.nightly.markdown import render

    result = _compared(tmp_path, [[nightly_row("mla-absorbed", lognormal_samples(1.0, seed=i), flags=flags),
                                   nightly_row("mla-eager", lognormal_samples(1.0, seed=i), flags="")]
                                  for i, flags in enumerate(("noisy", ""))])
    (flagged_case,) = result.of("flagged_baseline")
    assert "flagged noisy" in flagged_case.detail and flagged_case.ci is None
    assert len(result.of("unchanged")) == 1 and not result.failed
    assert "flagged noisy: not used as a baseline" in render(result)


def test_nightly_tables_say_when_a_judged_row_of_this_run_is_flagged(tmp_path):
    """A slower row measured on a busy machine is judged (the CI decides), and its table row says busy."""
    from attnbench.harness.nightly.markdown import render

    result = _compared(tmp_path, [[nightly_row("mla-absorbed", lognormal_samples(median, seed=i), flags=flags)]
                                  for i, (median, flags) in enumerate(((1.0, ""), (1.5, "busy")))])
    (suspect,) = result.of("suspect")
    row = next(line for line in render(result).splitlines() if line.startswith(f"| {suspect.label}"))
    assert row.endswith("| this run's row is flagged busy |")
