"""Every command's bad input: one line ``error: ...`` naming the value and what is allowed, exit 2,
no traceback, nothing written outside the test's results folder (issue 12, item 6).

Each entry is (command, argv, text the line must hold). ``{w}`` is a shared folder holding good
results, damaged ones, a file where a folder belongs and a file that is not a history; ``{res}`` is
the results folder a command may write to. Commands run in-process through their ``main(argv)``
(as ``attnbench <command>`` runs them); a few run in a real subprocess to prove the wiring.
"""

from __future__ import annotations

import importlib
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from attnbench.harness import results

FIXTURE = Path(__file__).parent / "fixtures" / "report_sweep"
MAINS = {"report": "attnbench.harness.report.__main__:main", "merge": "attnbench.harness.results.merge:main",
         "status": "attnbench.harness.sweep.status:main", "nightly": "attnbench.harness.nightly.cli:main",
         "lowrank": "attnbench.harness.studies.lowrank.__main__:cli", "run": "attnbench.harness.app.main:main",
         "selfcheck": "attnbench.harness.selfcheck.__main__:main",
         "export": "attnbench.harness.interop.flashinfer_trace.export:main",
         "import-trace": "attnbench.harness.interop.flashinfer_trace.load:main"}
MODULES = {"report": "attnbench.harness.report", "merge": "attnbench.harness.results.merge",
           "status": "attnbench.harness.sweep.status", "nightly": "attnbench.harness.nightly",
           "lowrank": "attnbench.harness.studies.lowrank"}

OK = "{w}/ok"  # a readable sweep
REPORT = [
    (f"{OK} --out {{res}}/r --reserve nan", "reserve=nan"),
    (f"{OK} --out {{res}}/r --reserve inf", "reserve=inf"),
    (f"{OK} --out {{res}}/r --reserve -1", "reserve=-1"),
    (f"{OK} --out {{res}}/r --reserve 1.5", "reserve=1.5"),
    (f"{OK} --out {{res}}/r --reserve x", "'x'"),
    (f"{OK} --out {{res}}/r --budget 1e999", "1e999"),
    (f"{OK} --out {{res}}/r --budget 99999999999999999999M", "99999999999999999999M"),
    (f"{OK} --out {{res}}/r --budget nanGiB", "nanGiB"),
    (f"{OK} --out {{res}}/r --budget abc", "abc"),
    (f"{OK} --out {{res}}/r --budget 0", "'0'"),
    (f"{OK} --out {{res}}/r --budget=-5GiB", "-5GiB"),
    (f"{OK} --out {{res}}/r --batches 0", "'0'"),
    (f"{OK} --out {{res}}/r --batches 1e999", "1e999"),
    (f"{OK} --out {{res}}/r --batches 99999999999999999999999", "99999999999999999999999"),
    (f"{OK} --out {{res}}/r --batches=-8", "-8"),
    (f"{OK} --out {{res}}/r --batches ,", "','"),
    (f"{OK} --out {{res}}/r --widths triple", "triple"),
    (f"{OK} --out {{res}}/r --widths ,", "','"),
    (f"{OK} --out {{res}}/r --filter nokey", "nokey"),
    (f"{OK} --out {{res}}/r --filter bogus=1", "bogus"),
    (f"{OK} --out {{res}}/r --filter variant=nothere", "variant=nothere"),
    (f"{OK} --out {{res}}/r --filter =x", "=x"),
    (f"{OK} --out {{res}}/r --baseline nonsense", "nonsense"),
    (f"{OK} --out {{res}}/r --baseline bogus=1", "bogus=1"),
    (f"{OK} --out {{res}}/r --baseline variant=", "variant="),
    (f"{OK} --out {{res}}/r --baseline ''", "''"),
    (f"{OK} --out {{w}}/afile", "{w}/afile"),
    (f"{OK} --out {{w}}/afile/sub", "{w}/afile"),
    (f"{OK} --out ''", "''"),
    (f"{OK} --out /proc/attnbench-test", "/proc/attnbench-test"),
    ("{w}/nothing --out {res}/r", "{w}/nothing"),
    ("{w}/damaged --out {res}/r", "delete it and resume"),
    ("{w}/study/lowrank-svd.parquet --out {res}/r", "{w}/study/lowrank-svd.parquet"),
    ("--out {res}/r", "results"),
    (f"{OK} --bogus", "--bogus"),
    (f"{OK} --out", "--out"),
    (f"{OK} --out {{res}}/r --baseline impl=nope", "implementations present: "),  # issue 19
    (f"{OK} --out {{res}}/r --baseline variant=zz,impl=eager", "variants present: "),
    (f"{OK} --out {{res}}/r --baseline-impl nope", "--baseline-impl"),
]
MERGE = [
    (OK, "--out"),
    (f"{OK} --out", "--out"),
    ("--out {res}/m", "SWEEP_OR_RUN_DIR"),
    ("{w}/nothing --out {res}/m", "{w}/nothing"),
    (f"{OK} --out {OK}/sub", f"{OK}/sub"),
    (f"{OK} {OK}/rows --out {{res}}/m", f"{OK}/rows"),
    (f"{OK} --out {{w}}/afile", "{w}/afile"),
    (f"{OK} --out {{w}}/afile/sub", "{w}/afile"),
    (f"{OK} --out ''", "''"),
    (f"{OK} --out /proc/attnbench-test", "/proc/attnbench-test"),
    (f"{OK} --out {{res}}/m --prefer /elsewhere", "/elsewhere"),
    (f"{OK} --out {{res}}/m --prefer ''", "''"),
    ("{w}/damaged --out {res}/m", "delete it and resume"),
    (f"{OK} {{w}}/twin --out {{res}}/m", "duplicate case"),
    (f"{OK} --out {{res}}/m --bogus", "--bogus"),
]
STATUS = [
    ("", "SWEEP_OR_RUN_DIR"),
    ("{w}/nothing", "{w}/nothing"),
    ("{w}/afile", "{w}/afile"),
    ("{w}/empty", "{w}/empty"),
    ("{w}/plan_not_json", "plan.json"),
    ("{w}/plan_wrong_types", "plan.json"),
    ("{w}/plan_binary", "plan.json"),
    ("{w}/multirun_unclosed", "multirun.yaml"),
    ("{w}/multirun_text", "multirun.yaml"),
    ("{w}/multirun_no_sweeper", "multirun.yaml"),
    ("{w}/overrides_bad", "overrides.yaml"),
    ("{w}/ok --bogus", "--bogus"),
]
DB = "--db {res}/h.sqlite"
NIGHTLY = [
    ("bogus", "bogus"),
    ("", "command"),
    ("ingest", "results"),
    (f"ingest {{w}}/nothing {DB}", "{w}/nothing"),
    (f"ingest {{w}}/damaged {DB}", "delete it and resume"),
    (f"ingest {OK} {DB} --commit 'a b'", "'a b'"),
    (f"ingest {OK} {DB} --commit '`x`'", "'`x`'"),
    (f"ingest {OK} {DB} --commit ''", "''"),
    (f"ingest {OK} {DB} --commit=-x", "'-x'"),
    (f"ingest {OK} --commit abc123 --db {{w}}", "{w}"),  # a folder: the history's own "not a history" line
    # A pipe (as a device node): as root, --db /dev/null once replaced /dev/null with a SQLite file.
    (f"ingest {OK} --commit abc123 --db {{w}}/fifo", "{w}/fifo is not a regular file"),
    ("gc --db {w}/fifo", "{w}/fifo is not a regular file"),
    ("gc --db {res}/none.sqlite", "no history at {res}/none.sqlite"),
    (f"gc {DB} --keep 99999999999999999999999", "keep=99999999999999999999999"),
    (f"ingest {OK} --db ''", "''"),
    (f"ingest {OK} --commit abc123 --db {{res}}/bad.sqlite", "{res}/bad.sqlite"),
    (f"ingest {OK} --commit abc123 --db {{w}}/afile/h.sqlite", "{w}/afile"),
    ("compare --db {res}/bad.sqlite", "{res}/bad.sqlite"),
    (f"compare {DB} --threshold nan", "threshold=nan"),
    (f"compare {DB} --threshold inf", "threshold=inf"),
    (f"compare {DB} --threshold=-0.1", "threshold=-0.1"),
    (f"compare {DB} --threshold 1e999", "threshold=inf"),
    (f"compare {DB} --threshold 2", "threshold=2"),
    (f"compare {DB} --threshold x", "'x'"),
    (f"compare {DB} --confirm 0", "confirm=0"),
    (f"compare {DB} --confirm=-3", "confirm=-3"),
    (f"compare {DB} --confirm 1.5", "'1.5'"),
    (f"compare {DB} --confirm 99999999999999999999999", "99999999999999999999999"),
    (f"compare {DB} --run abc", "'abc'"),
    (f"compare {DB} --run 999", "run 999"),
    (f"compare {DB} --baseline zzz", "'zzz'"),
    (f"compare {DB} --markdown {{w}}", "{w}"),
    (f"compare {DB} --markdown {{w}}/afile/x.md", "{w}/afile"),
    (f"compare {DB} --markdown ''", "''"),
    (f"compare {DB} --plots {{w}}/afile", "{w}/afile"),
    (f"compare {DB} --plots ''", "''"),
    (f"history {DB} --limit 0", "--limit 0"),
    (f"history {DB} --limit=-1", "--limit -1"),
    (f"history {DB} --limit x", "'x'"),
    ("history --db {res}/bad.sqlite", "{res}/bad.sqlite"),
    (f"accept {DB} 999", "run 999"),
    (f"accept {DB} x", "'x'"),
    (f"accept {DB}", "run"),
    (f"gc {DB} --keep 0", "keep=0"),
    (f"gc {DB} --keep=-1", "keep=-1"),
    (f"gc {DB} --keep x", "'x'"),
    ("gc --db {res}/bad.sqlite", "{res}/bad.sqlite"),
    (f"compare {DB} --run 99999999999999999999", "--run=99999999999999999999"),  # issue 19: past SQLite's int
    (f"compare {DB} --run=-1", "--run=-1"),
    (f"compare {DB} --baseline 99999999999999999999", "--baseline=99999999999999999999"),
    (f"compare {DB} --run 1 --baseline 1", "--baseline=1 is the run being judged"),
    (f"accept {DB} 99999999999999999999", "--run=99999999999999999999"),
]
LOWRANK = [(f"{item} --out {{res}}/lr", named) for item, named in [
    ("d_c=0", "d_c=0"), ("d_c=-64", "d_c=-64"), ("d_c=nan", "d_c='nan'"), ("d_c=inf", "d_c='inf'"),
    ("d_c=1e999", "d_c=inf"), ("d_c=99999999999999999999", "d_c=99999999999999999999"), ("d_c=[]", "d_c"),
    ("d_c=abc", "d_c='abc'"), ("d_c=[64,abc]", "d_c='abc'"), ("d_c=64.5", "d_c=64.5"), ("d_c=[64", "d_c=[64"),
    ("d_r=3", "d_r=3"), ("d_r=[31]", "d_r=31"), ("d_r=0", "d_r=0"), ("d_r=[100000]", "d_r=100000"),
    ("methods=[bogus]", "'bogus'"), ("methods=[]", "methods"), ("methods=svd,qr", "'svd,qr'"),
    ("calib_tokens=0", "calib_tokens=0"), ("calib_tokens=-1", "calib_tokens=-1"),
    ("calib_tokens=nan", "calib_tokens='nan'"), ("eval_tokens=99999999999999999999", "eval_tokens=9999"),
    ("act_tokens=99999", "act_tokens=99999"), ("window=0", "window=0"), ("window=true", "window=True"),
    ("latency_context=-1", "latency_context=-1"), ("latency_context=1e999", "latency_context=inf"),
    ("impl=bogus", "impl='bogus'"), ("latency_impls=[nope]", "'nope'"), ("source_latency_impls=[x]", "'x'"),
    ("dtype=float99", "'float99'"), ("kv_dtype=int3", "'int3'"), ("rope_pairs=sideways", "'sideways'"),
    ("layers=[]", "layers"), ("layers=[-1]", "layers=-1"), ("layers=[a]", "layers='a'"),
    ("model=nonexistent", "'nonexistent'"), ("bogus=1", "'bogus'"), ("novalue", "'novalue'"), ("=5", "'=5'"),
    ("lowrank.d_c=1", "'lowrank'"),
    ("layers=[999]", "layers=999"), ("layers=[0,30]", "layers=30"), ("model=tiny", "model='tiny'"),  # issue 19
]] + [
    ("d_c=[64] --out /proc/attnbench-test/x", "/proc/attnbench-test"),
    ("d_c=[64] --out {w}/afile", "{w}/afile"),
    ("d_c=[64] --out {w}/afile/sub", "{w}/afile"),
    ("d_c=[64] --out ''", "''"),
    ("--bogus", "--bogus"),
    ("--out", "--out"),
]
# The Hydra app (attnbench key=value ...): every case is refused by the pre-check, before Hydra makes a
# folder. Each runs with device=cpu measure=quick after it (a sweep's -m must come first; a device case
# keeps its own device).
RUN = [(argv + (" measure=quick" if "device=" in argv else " device=cpu measure=quick"), named) for argv, named in [
    ("seq=99999999999M", "seq='99999999999M'"), ("seq=2^63", "seq=2^63"), ("seq=3000000000", "seq='3000000000' is too large"),
    ("batch=1180591620717411303424", "batch=1180591620717411303424"), ("batch=0", "batch=0"),
    ("decode_len=9223372036854775808", "decode_len=9223372036854775808"), ("heads=0", "heads=0"),
    ("head_dim=99999999999", "head_dim=99999999999"), ("threads=0", "threads=0"),
    ("seq=10^12", "seq=10^12"), ("name=résumé", "name=résumé"),
    ("seq_lens=[]", "seq_lens=[] holds no length"),
    ("seq_lens=spread batch=2147483647", "batch=2147483647: a ragged batch holds at most 1048576"),
    ("name=${oc.env:ATTNBENCH_TEST_SURELY_UNSET}", "ATTNBENCH_TEST_SURELY_UNSET"),
    ("+seqq=1", "unknown key 'seqq'"), ("++colour=red", "unknown key 'colour'"),
    ("++measure.colour=1", "unknown key 'measure.colour'"),
    ("model=tiny_hybrid linear_num_key_heads=0", "set it as model.linear_num_key_heads="),
    ("model=tiny_hybrid model.linear_num_key_heads=0", "linear_num_key_heads=0 is not allowed"),
    # A shape key the preset does not set (tiny has no window): Hydra's +, not an empty list of keys.
    ("model.sliding_window=4", "add it with +model.sliding_window="),
    ("model.colour=red", "unknown key 'model.colour'; valid shape keys: attn_output_gate"),
    ("measure.target_ci_rel=0", "measure.target_ci_rel=0.0"), ("measure.target_ci_rel=1", "measure.target_ci_rel=1.0"),
    ("measure.memory_headroom=-1", "measure.memory_headroom=-1.0"),
    ("measure.memory_headroom=1.5", "measure.memory_headroom=1.5"),
    ("measure.telemetry_window_s=nan", "measure.telemetry_window_s=nan"),
    ("measure.telemetry_window_s=inf", "measure.telemetry_window_s=inf"),
    ("measure.max_step_s=0", "measure.max_step_s=0.0"), ("measure.budget_s=-1", "measure.budget_s=-1.0"),
    ("measure.confidence=1", "measure.confidence=1.0"), ("measure.min_reps=0", "measure.min_reps=0"),
    ("measure.warmup_s=nan", "measure.warmup_s=nan"),
    ("device=cpu:1", "device='cpu:1'"), ("device=tpu", "device='tpu'"),
    ("seed=99999999999999999999", "seed=99999999999999999999"), ("seed=-1", "seed=-1"),
    ("resume=true", "resume=true needs name="),
    ("hydra.run.dir=", "hydra.run.dir=''"), ("hydra.run.dir=.", "hydra.run.dir='.'"),
    ("hydra.run.dir=..", "hydra.run.dir='..'"), ("hydra.run.dir={w}/afile", "{w}/afile"),
    ("hydra.run.dir={w}/afile/sub", "{w}/afile"),
    ("-m hydra.sweep.dir=.. seq=32,64", "hydra.sweep.dir='..'"),
    ("-m seq=32 measure.budget_s=0.3,-1", "measure.budget_s=-1.0 is not allowed"),
    ("-m seq=32 batch=1,2,0", "(sweep job 2 of 3: batch=0;"),
    ("model=../../../../tmp/x/evil_model", "model=../../../../tmp/x/evil_model"),
    ("model=/etc/passwd", "model=/etc/passwd"), ("measure=../default", "measure=../default"),
    ("task=lowrank", "task=lowrank needs the study's settings"),
    ("experiment=lowrank_smollm2 lowrank.layers=[999]", "layers=999"),
    ("experiment=lowrank_smollm2 model=tiny", "model='tiny'"),
    ("calibration_dir=/proc/attnbench-forbidden measure.calibrate=true", "/proc/attnbench-forbidden"),
    ("calibration_dir={w}/afile/cache measure.calibrate=true", "{w}/afile"),
    ("--config-dir {w}/conf_broken model=mine", "{w}/conf_broken/model/mine.yaml"),
    ("--config-dir {w}/conf_binary model=mine", "{w}/conf_binary/model/mine.yaml"),
    ("--config-dir {w}/conf_empty model=mine", "lacks hidden, heads, head_dim"),
]]
SELFCHECK = [
    ("--out {w}/afile", "{w}/afile"), ("--out {w}/afile/sub", "{w}/afile"), ("--out ''", "''"),
    ("--out", "--out"), ("--out /proc/attnbench-test/x", "/proc/attnbench-test"),
    ("--out {res}/s --skip nope", "'nope'"), ("--bogus", "--bogus"),
]
EXPORT = [(f"--format flashinfer-trace {item}", named) for item, named in [
    (f"{OK} --out {{w}}/afile", "{w}/afile"), (f"{OK} --out {{w}}/afile/sub", "{w}/afile"),
    (f"{OK} --out ''", "''"), (f"{OK} --out /proc/attnbench-test/x", "/proc/attnbench-test"),
    ("{w}/nothing --out {res}/x", "{w}/nothing"), ("{w}/empty --out {res}/x", "{w}/empty"),
]] + [(f"--format bogus {OK} --out {{res}}/x", "'bogus'")]
IMPORT_TRACE = [
    ("{w}/trace_not_json", "x.json is not JSON"), ("{w}/trace_list", "x.json holds a JSON list"),
    ("{w}/trace_name_int", "not 5"), ("{w}/trace_workload_bad", "d.jsonl:2 is not JSON"),
    ("{w}/trace_workload_shape", "d.jsonl:1: a workload line holds"),
    ("''", "''"), ("{w}/empty", "{w}/empty has no definitions/"),
    ("{w}/trace_ok --impl bogus", "'bogus'"), ("{w}/trace_ok --impl eager,", "''"),
    ("{w}/trace_ok --name ../../etc", "'../../etc'"), ("{w}/trace_ok --name ''", "''"),
]
TABLE = [(cmd, argv, named) for cmd, rows in (("report", REPORT), ("merge", MERGE), ("status", STATUS),
                                               ("nightly", NIGHTLY), ("lowrank", LOWRANK), ("run", RUN),
                                               ("selfcheck", SELFCHECK), ("export", EXPORT),
                                               ("import-trace", IMPORT_TRACE))
         for argv, named in rows]


def _damaged(folder: Path) -> None:
    good = results.write_row(folder / "0", {"case_id": "a", "status": "ok", "finished_at": 1.0, "run_root": "d",
                                            "reason": ""})
    (good.parent / "b.1.parquet").write_bytes(good.read_bytes()[:100])


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    w = tmp_path_factory.mktemp("world")
    shutil.copytree(FIXTURE, w / "ok")
    shutil.copytree(FIXTURE, w / "twin")
    _damaged(w / "damaged")
    (w / "study").mkdir()
    (w / "study" / "lowrank-svd.parquet").write_bytes(b"PAR1 truncated")
    (w / "afile").write_text("a file where a folder belongs\n")
    for name, text in {"conf_broken": b"name: [unclosed\n", "conf_binary": b"\xff\xfe\x00garbage",
                       "conf_empty": b""}.items():  # a --config-dir with a broken, binary or empty preset
        (w / name / "model").mkdir(parents=True)
        (w / name / "model" / "mine.yaml").write_bytes(text)
    from attnbench.harness.nightly.cli import main as nightly

    one = w / "one"  # a single run root of the fixture: a history with one run (id 1)
    shutil.copytree(FIXTURE, one)
    frame = pd.read_parquet(one / "rows" / "rows.parquet")
    frame[frame["run_root"] == "report_decode"].to_parquet(one / "rows" / "rows.parquet")
    assert nightly(["ingest", str(one), "--db", str(w / "h.sqlite"), "--commit", "abc123"]) == 0
    (w / "empty").mkdir()
    os.mkfifo(w / "fifo")
    definition = '{"name": "d", "op_type": "gqa_dense"}'
    for name, files in {
        "trace_not_json": {"definitions/x.json": "garbage"},
        "trace_list": {"definitions/x.json": "[1, 2]"},
        "trace_name_int": {"definitions/x.json": '{"name": 5}'},
        "trace_workload_bad": {"definitions/d.json": definition, "workloads/d.jsonl": '\n{"definition": "d"\n'},
        "trace_workload_shape": {"definitions/d.json": definition, "workloads/d.jsonl": '{"definition": 3}\n'},
        "trace_ok": {"definitions/d.json": definition},
    }.items():
        for rel, text in files.items():
            (w / name / rel).parent.mkdir(parents=True, exist_ok=True)
            (w / name / rel).write_text(text)
    plan = '{"job_num": 0, "device": "cpu", "cases": []}'
    for name, files in {
        "plan_not_json": {"0/plan.json": "{not json"},
        "plan_wrong_types": {"0/plan.json": '{"job_num": "x", "cases": 5}'},
        "plan_binary": {"0/plan.json": b"\xff\xfe\x00garbage"},
        "multirun_unclosed": {"0/plan.json": plan, "multirun.yaml": "hydra: [unclosed"},
        "multirun_text": {"0/plan.json": plan, "multirun.yaml": "just text"},
        "multirun_no_sweeper": {"0/plan.json": plan, "multirun.yaml": "hydra: {sweeper: 3}"},
        "overrides_bad": {"plan.json": plan, ".hydra/overrides.yaml": "[unclosed"},
    }.items():
        for rel, text in files.items():
            path = w / name / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return w


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def _argv(text: str, w: Path, res: Path) -> list[str]:
    return shlex.split(text.replace("{w}", str(w)).replace("{res}", str(res)))


def _main(command: str):
    module, _, function = MAINS[command].partition(":")
    return getattr(importlib.import_module(module), function)


def _check(code: object, err: str, named: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err
    assert named in lines[0], f"{named!r} not named in {lines[0]!r}"


def test_the_table_is_large():
    assert len(TABLE) >= 80, len(TABLE)


@pytest.mark.parametrize("command,argv,named", TABLE, ids=[f"{c}: {a}" for c, a, _ in TABLE])
def test_bad_input(command, argv, named, world, tmp_path, capsys, monkeypatch):
    res = tmp_path / "res"
    res.mkdir()
    (res / "bad.sqlite").write_text("not a history\n")  # a history folder of its own: commands add a lock file
    shutil.copy(world / "h.sqlite", res / "h.sqlite")
    monkeypatch.chdir(tmp_path)  # a default output path (results/...) would land here, and be seen
    before, cwd_before = _snapshot(world), sorted(p.name for p in tmp_path.iterdir())
    try:
        code = _main(command)(_argv(argv, world, res))
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    w = str(world)
    _check(code, captured.err, named.replace("{w}", w).replace("{res}", str(res)))
    assert _snapshot(world) == before, "a bad input changed the shared folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == cwd_before, "a bad input wrote outside its results folder"


SUBPROCESS = [("report", f"{OK} --out {{res}}/r --reserve nan", "reserve=nan"),
              ("merge", "{w}/damaged --out {res}/m", "delete it and resume"),
              ("status", "{w}/plan_not_json", "plan.json"),
              ("nightly", "compare --db {res}/bad.sqlite", "{res}/bad.sqlite"),
              ("lowrank", "d_c=0 --out {res}/lr", "d_c=0")]


@pytest.mark.parametrize("command,argv,named", SUBPROCESS, ids=[c for c, _, _ in SUBPROCESS])
def test_bad_input_through_a_real_process(command, argv, named, world, tmp_path):
    res = tmp_path / "res"
    res.mkdir()
    done = subprocess.run([sys.executable, "-m", MODULES[command], *_argv(argv, world, res)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, check=False)
    _check(done.returncode, done.stderr, named.replace("{w}", str(world)).replace("{res}", str(res)))
    assert list(res.iterdir()) == []
