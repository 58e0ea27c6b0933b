"""Verdicts on stored samples: injected slowdowns, deterministic figures, fingerprints, the command line."""

from __future__ import annotations

import math
import sqlite3
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from attnbench.harness.nightly import cli
from attnbench.harness.nightly.compare import FingerprintMismatch, compare, judge_timing
from attnbench.harness.nightly.ingest import read_run
from attnbench.harness.nightly.ratio import ratio_ci, run_to_run_sd_log, widen
from attnbench.harness.nightly.store import History
from tests.nightly_rows import FIGURES, case_id, lognormal_samples, row, write_run

ABSORBED = "mla-absorbed"

BASE = lognormal_samples(1.0, seed=1)
SAME = lognormal_samples(1.0, seed=2)  # another run of the same code


def _scaled(samples, factor):
    return [x * factor for x in samples]


# One pair of runs shows a slowdown as "suspect" only: compare confirms it over consecutive runs.
@pytest.mark.parametrize(("factor", "kind"), [(1.20, "suspect"), (1.02, "unchanged"), (1.0, "unchanged"),
                                              (0.98, "unchanged"), (0.80, "improvement")])
def test_timing_rule_on_injected_changes(factor, kind):
    verdict, ci, sd = judge_timing(BASE, _scaled(SAME, factor))
    assert verdict == kind, ci
    assert ci.low <= ci.ratio <= ci.high and sd == 0.0
    assert ci.ratio == pytest.approx(factor * np.median(SAME) / np.median(BASE))


def test_bootstrap_interval_is_reproducible_and_covers_the_ratio():
    a, b = ratio_ci(BASE, SAME), ratio_ci(BASE, SAME)
    assert a == b  # seeded: the same samples give the same interval
    assert a.low < 1.0 < a.high and a.half_width_log < 0.02


def test_a_slowdown_within_a_wide_interval_is_noisy_not_flagged():
    wide_base = lognormal_samples(1.0, n=30, sigma=0.4, seed=3)
    wide_new = _scaled(lognormal_samples(1.0, n=30, sigma=0.4, seed=4), 1.10)
    kind, ci, _ = judge_timing(wide_base, wide_new)
    assert kind == "noisy" and ci.half_width_log > math.log(1.05)


def test_history_spread_widens_the_interval():
    quiet = [1.0, 1.003, 0.998, 1.001, 0.999, 1.002]
    jumpy = [1.0, 1.12, 0.93, 1.08, 0.95, 1.1]
    assert judge_timing(BASE, _scaled(SAME, 1.10), history_ms=quiet)[0] == "suspect"
    kind, ci, sd = judge_timing(BASE, _scaled(SAME, 1.10), history_ms=jumpy)
    assert kind == "noisy" and sd > 0.05
    assert judge_timing(BASE, _scaled(SAME, 1.10), history_ms=jumpy[:3])[2] > 0.05  # three runs: two differences
    assert judge_timing(BASE, _scaled(SAME, 1.10), history_ms=jumpy[:2])[2] == 0.0  # too short to estimate


def test_run_to_run_spread_shrugs_off_one_step_change():
    steady = [1.0, 1.01, 0.99, 1.0, 1.01, 0.99, 1.0]
    stepped = steady + [1.5, 1.51, 1.49, 1.5, 1.51, 1.49]
    assert run_to_run_sd_log(stepped) < 2 * run_to_run_sd_log(steady) + 1e-9
    base = ratio_ci(BASE, SAME)
    wider = widen(base, 0.05)
    assert wider.ratio == base.ratio and wider.low < base.low and wider.high > base.high


def _runs(tmp_path: Path, base_rows, new_rows, *, new_env=None):
    history = History(tmp_path / "h.sqlite")
    ids = []
    for i, (rows, env) in enumerate([(base_rows, None), (new_rows, new_env)]):
        run, cases = read_run(write_run(tmp_path / f"r{i}", rows, time_utc=f"2026-01-0{i + 1}T00:00:00+00:00",
                                        env=env), commit=f"c{i}")
        ids.append(history.add_run(run, cases))
    return history, [history.run(i) for i in ids]


def _compare(history, runs, **kwargs):
    base, new = runs
    return compare(new, base, history.cases(new.run_id), history.cases(base.run_id), **kwargs)


def test_deterministic_figures_are_compared_exactly(tmp_path):
    changed = {**FIGURES, "flops": FIGURES["flops"] + 1, "peak_mem_bytes": int(FIGURES["peak_mem_bytes"] * 1.10),
               "kv_cache_bytes": FIGURES["kv_cache_bytes"] + 64}
    history, runs = _runs(tmp_path, [row("mla-absorbed", BASE)], [row("mla-absorbed", SAME, figures=changed)])
    result = _compare(history, runs)
    by_figure = {f.figure: f for f in result.figures}
    assert set(by_figure) == {"flops", "peak_mem_bytes", "kv_cache_bytes"}  # every change, however small
    assert not by_figure["flops"].fails and not by_figure["kv_cache_bytes"].fails  # reported only
    assert by_figure["peak_mem_bytes"].fails and result.failed  # 10% hungrier than the 5% threshold
    assert result.of("unchanged")  # the timing itself did not move
    assert _compare(history, runs, strict_figures=True).figures[0].fails


def test_a_case_that_stopped_working_is_a_regression(tmp_path):
    history, runs = _runs(tmp_path, [row("mla-absorbed", BASE), row("mla-eager", BASE)],
                          [row("mla-absorbed", None, status="oom", reason="OutOfMemoryError: 2 GiB"),
                           row("gqa-sdpa", SAME)])
    result = _compare(history, runs)
    assert [v.kind for v in result.of("broken")] == ["broken"] and result.failed
    assert "ok -> oom: OutOfMemoryError" in result.of("broken")[0].detail
    assert len(result.of("missing")) == 1 and len(result.of("new")) == 1


def test_different_fingerprints_are_never_compared(tmp_path):
    history, runs = _runs(tmp_path, [row("mla-absorbed", BASE)], [row("mla-absorbed", SAME)],
                          new_env={"env_torch": "2.14.0+cpu"})
    with pytest.raises(FingerprintMismatch, match=r"env_torch '2.14.0\+cpu' vs '2.13.0\+cpu'"):
        _compare(history, runs)


def _inject(history: History, run_id: int, factor: float) -> None:
    """Multiply every stored sample (and the median) of a run by ``factor``, in place."""
    with sqlite3.connect(history.path) as con:
        stored = con.execute("SELECT case_id, samples_f64 FROM cases WHERE run_id = ?", (run_id,)).fetchall()
        for case_id, blob in stored:
            scaled = (np.frombuffer(blob, dtype="<f8") * factor).astype("<f8").tobytes()
            con.execute("UPDATE cases SET samples_f64 = ?, median_ms = median_ms * ?, ci_low_ms = ci_low_ms * ?, "
                        "ci_high_ms = ci_high_ms * ? WHERE run_id = ? AND case_id = ?",
                        (scaled, factor, factor, factor, run_id, case_id))


def _night(tmp_path: Path, db: Path, i: int, seed: int, **env) -> int:
    rows = [row("mla-absorbed", lognormal_samples(1.0, seed=seed)),
            row("mla-eager", lognormal_samples(3.0, seed=seed + 100))]
    root = write_run(tmp_path / f"night-{i}", rows, time_utc=f"2026-01-{i + 1:02d}T00:00:00+00:00", env=env or None)
    assert cli.main(["ingest", str(root), "--commit", f"{i:040x}", "--db", str(db)]) == 0
    return History(db).latest().run_id


def test_a_slowdown_is_a_regression_only_when_the_run_before_showed_it_too(tmp_path):
    history, (base, new) = _runs(tmp_path, [row("mla-absorbed", BASE), row("mla-eager", BASE)],
                                 [row("mla-absorbed", _scaled(SAME, 1.2)), row("mla-eager", _scaled(SAME, 1.2))])
    slow_before = {c.case_id: c for c in history.cases(new.run_id).values() if c.labels["impl"] == "absorbed"}
    cases = history.cases(new.run_id), history.cases(base.run_id)
    alone = compare(new, base, *cases)
    assert [v.kind for v in alone.cases] == ["suspect", "suspect"] and alone.suspected and not alone.failed
    twice = compare(new, base, *cases, previous=[slow_before])  # absorbed was slow in the run before, eager not
    assert sorted(v.kind for v in twice.cases) == ["regression", "suspect"] and twice.failed
    assert next(v for v in twice.cases if v.kind == "regression").detail == "slower in 2 runs in a row"
    assert compare(new, base, *cases, confirm=1).of("regression")  # the single-run rule, on request
    assert not compare(new, base, *cases, previous=[slow_before], confirm=3).failed  # one run before is not two
    with pytest.raises(ValueError, match="confirm=0 is not allowed"):
        compare(new, base, *cases, confirm=0)


def test_two_slow_runs_that_disagree_are_a_machine_state_not_a_regression(tmp_path):
    """+20% then +60%: each suspect against the baseline, but not one slower code path (which moves the
    case by one factor): a co-tenant's load that lasted over two back-to-back runs does this."""
    history, (base, new) = _runs(tmp_path, [row("mla-absorbed", BASE)], [row("mla-absorbed", _scaled(SAME, 1.6))])
    slow_before = {case_id(ABSORBED): history.cases(new.run_id)[case_id(ABSORBED)]}
    slow_before = {k: replace(v, samples_ms=tuple(_scaled(lognormal_samples(1.0, seed=5), 1.2)))
                   for k, v in slow_before.items()}
    cases = history.cases(new.run_id), history.cases(base.run_id)
    (verdict,) = compare(new, base, *cases, previous=[slow_before]).cases
    assert verdict.kind == "suspect"
    agreeing = {k: replace(v, samples_ms=tuple(_scaled(lognormal_samples(1.0, seed=5), 1.6)))
                for k, v in slow_before.items()}
    assert compare(new, base, *cases, previous=[agreeing]).cases[0].kind == "regression"


def test_command_line_confirms_an_injected_slowdown_and_moves_on(tmp_path, capsys):
    db = tmp_path / "history.sqlite"
    first = _night(tmp_path, db, 0, seed=10)
    assert cli.main(["compare", "--db", str(db)]) == 0  # nothing to compare with yet: not a failure
    assert "no baseline yet" in capsys.readouterr().out
    for i in (1, 2):
        _night(tmp_path, db, i, seed=10 + i)
        assert cli.main(["compare", "--db", str(db)]) == 0
    good = History(db).latest().run_id
    capsys.readouterr()

    suspect = _night(tmp_path, db, 3, seed=13)
    _inject(History(db), suspect, 1.20)
    capsys.readouterr()
    assert cli.main(["compare", "--db", str(db)]) == 0  # one slow night: suspected, not confirmed
    out = capsys.readouterr().out
    assert out.startswith("## attnbench nightly: PASS: no regression (2 suspected, not confirmed)\n"), out
    assert "### Suspected, not confirmed" in out and History(db).run(suspect).verdict == "suspect"

    second = _night(tmp_path, db, 4, seed=14)
    _inject(History(db), second, 1.20)
    summary, plots = tmp_path / "summary.md", tmp_path / "plots"
    assert cli.main(["compare", "--db", str(db), "--markdown", str(summary), "--plots", str(plots)]) == 1
    text = summary.read_text()
    assert text.startswith("## attnbench nightly: FAIL: 2 slower\n")
    assert "### Regressions" in text and "| mla/absorbed decode seq=4k batch=1 float32 |" in text and "+20." in text
    assert f"| baseline (last good) | {good} |" in text  # the suspect night was not a baseline
    assert len(list(plots.glob("*.png"))) == 2 and "mla/eager" in (plots / "index.md").read_text()
    assert [History(db).run(r).verdict for r in (suspect, second)] == ["regression", "regression"]

    third = _night(tmp_path, db, 5, seed=15)  # back to normal: judged against the last good run, not the slow ones
    _inject(History(db), third, 1.02)  # and a 2% change is within the threshold
    assert cli.main(["compare", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "PASS: no regression" in out and f"| baseline (last good) | {good} |" in out and "2 unchanged" in out

    assert cli.main(["accept", str(second), "--db", str(db)]) == 0
    assert cli.main(["compare", "--db", str(db), "--run", str(third), "--no-record"]) == 0  # now vs accepted run
    assert f"| baseline (last good) | {second} |" in capsys.readouterr().out
    assert cli.main(["history", "--db", str(db)]) == 0
    assert "accepted" in capsys.readouterr().out and first == 1


def test_command_line_refuses_other_fingerprints_in_one_line(tmp_path, capsys):
    db = tmp_path / "history.sqlite"
    _night(tmp_path, db, 0, seed=1)
    _night(tmp_path, db, 1, seed=2, env_driver="550.54", env_device_name="NVIDIA H100")
    capsys.readouterr()
    assert cli.main(["compare", "--db", str(db), "--baseline", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: run 2 (fingerprint ") and err.count("\n") == 1
    assert "are not comparable: they differ in env_device_name 'NVIDIA H100' vs 'Test CPU'" in err
    assert "env_driver '550.54' vs None" in err
    assert cli.main(["compare", "--db", str(db)]) == 0  # last-good looks on the same fingerprint only
    assert "no baseline yet" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "message"), [
    (["compare", "--threshold", "5"], "threshold=5.0 is not allowed"),
    (["compare", "--run", "abc"], "--run='abc' is not a run id"),
    (["compare", "--run", "99"], "run 99 is not in"),
    (["compare", "--baseline", "deadbeef"], "--baseline='deadbeef' is not last-good, a run id, or the commit"),
])
def test_command_line_bad_input_is_one_line(tmp_path, capsys, args, message):
    db = tmp_path / "history.sqlite"
    _night(tmp_path, db, 0, seed=1)
    assert cli.main([*args, "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
