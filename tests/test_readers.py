"""A finished sweep's rows as plain readers see them: pandas, pyarrow, duckdb and polars open
``results/<name>/rows`` directly, with timestamps, nullable integers and units; a finished job's
rows are packed into one file, and resume, load and merge read both forms.

One tiny sweep (model=tiny, measure=quick) of two jobs is measured once for the module: job 0
has one case (its file stays as written), job 1 two (packed when the job ends).
"""

from __future__ import annotations

import io
import shlex
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_dir

from attnbench.harness import results
from attnbench.harness.results import merge
from attnbench.harness.results.compact import PACKED, compact
from attnbench.harness.sweep.job import run_job
from attnbench.variants.presets import conf_root

TINY = ["experiment=smoke", "measure.calibrate=false", "device=cpu", "threads=1", "phase=decode"]
JOBS = (["variant=gqa", "impl=sdpa"], ["variant=mha", "impl=eager,sdpa"])


def _cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(conf_root()), version_base="1.3"):
        return compose("config", overrides=[*TINY, *overrides])


def _run_sweep(root: Path, *, resume: bool = False) -> None:
    for num, overrides in enumerate(JOBS):
        impl = overrides[1].split("=", 1)[1]
        cfg = _cfg([overrides[0], f"name={root.name}", f"resume={str(resume).lower()}"])
        cfg.impl = impl.split(",") if "," in impl else impl  # a list, as tests pass it (plan: several impls)
        run_job(cfg, job_dir=root / str(num), root=root, job={"job_num": num, "launcher": "basic"}, log=io.StringIO())


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("readers") / "tiny_sweep"
    _run_sweep(root)
    return root


def test_the_rows_folder_holds_row_files_only_and_a_finished_job_one_file(sweep):
    rows = sweep / results.ROWS
    assert sorted(p.relative_to(rows).parts[0] for p in rows.rglob("*")) == ["0", "0", "1", "1"]
    assert all(p.suffix == ".parquet" for p in rows.rglob("*") if p.is_file())
    (packed,) = (rows / "1").iterdir()  # two cases, one file
    assert packed.name.startswith(f"{PACKED}.") and pd.read_parquet(packed).shape[0] == 2
    for job in ("0", "1"):  # the logs and side files stay in the job folder
        assert {"config.yaml", "env.json", "plan.json"} <= {p.name for p in (sweep / job).iterdir()}


def test_pandas_reads_the_rows_folder_with_the_schema_dtypes(sweep):
    frame = pd.read_parquet(sweep / results.ROWS)
    assert len(frame) == 3 and set(frame["status"]) == {"ok"}
    for column in ("finished_at", "env_time_utc", "ceiling_measured_at"):
        assert str(frame[column].dtype) == "datetime64[us, UTC]", column
    assert frame["finished_at"].notna().all() and frame["env_time_utc"].notna().all()
    assert str(frame["batch"].dtype) == "Int64" and str(frame["job_num"].dtype) == "Int64"
    assert str(frame["l2_flush"].dtype) == "boolean" and str(frame["latency_ms"].dtype) == "float64"
    assert pd.api.types.is_string_dtype(frame["case_id"]) and pd.api.types.is_string_dtype(frame["repro"])
    loaded = results.load(sweep)  # the harness's own reader agrees, column by column
    assert dict(loaded.dtypes.astype(str)) == dict(frame.dtypes.astype(str))


def test_pyarrow_dataset_carries_units_and_utc_timestamps(sweep):
    dataset = ds.dataset(sweep / results.ROWS)
    assert dataset.to_table().num_rows == 3
    schema = dataset.schema
    assert schema.field("latency_ms").metadata == {b"unit": b"ms"}
    assert schema.field("peak_mem_bytes").metadata == {b"unit": b"bytes"}
    assert schema.field("gbps").metadata[b"unit"] == b"GB/s (1e9 bytes/s)"
    assert not schema.field("variant").metadata  # a name has no unit
    for column in ("finished_at", "env_time_utc", "ceiling_measured_at"):
        assert schema.field(column).type == pa.timestamp("us", tz="UTC"), column


def test_duckdb_reads_the_rows_folder(sweep):
    duckdb = pytest.importorskip("duckdb", reason="duckdb is not installed (pip install duckdb)")
    glob = str(sweep / results.ROWS / "**" / "*.parquet")
    count, started, batch = duckdb.sql(f"select count(*), typeof(any_value(env_time_utc)), "
                                       f"typeof(any_value(batch)) from read_parquet('{glob}')").fetchall()[0]
    assert (count, started, batch) == (3, "TIMESTAMP WITH TIME ZONE", "BIGINT")


def test_polars_reads_the_rows_folder(sweep):
    pl = pytest.importorskip("polars", reason="polars is not installed (pip install polars)")
    frame = pl.read_parquet(str(sweep / results.ROWS / "**" / "*.parquet"))
    assert frame.height == 3
    assert frame.schema["env_time_utc"] == pl.Datetime("us", "UTC") and frame.schema["batch"] == pl.Int64


def test_resume_after_packing_measures_nothing_again(sweep, tmp_path):
    root = tmp_path / sweep.name
    shutil.copytree(sweep, root)
    before = sorted(p.relative_to(root) for p in (root / results.ROWS).rglob("*.parquet"))
    assert results.finished_case_ids(root) == set(results.load(root)["case_id"])
    _run_sweep(root, resume=True)
    assert sorted(p.relative_to(root) for p in (root / results.ROWS).rglob("*.parquet")) == before
    assert len(results.load(root)) == 3


def test_an_interrupted_or_half_packed_job_still_loads(sweep, tmp_path):
    root = tmp_path / sweep.name
    shutil.copytree(sweep, root)
    packed = next((root / results.ROWS / "1").iterdir())
    rows = pd.read_parquet(packed)
    # Killed while packing: the packed file and one of the one-row files it packed, the same row twice.
    results.write_frame(root / results.ROWS / "1" / f"{rows['case_id'].iloc[0]}.1.parquet", rows.iloc[:1])
    assert len(results.load(root)) == 3 and len(results.load(root, attempts=True)) == 3
    assert len(merge.merge([root]).frame) == 3
    # Killed before packing: one-row files only (as every job before its end), and the old layout
    # (<job>/rows/ beside the job's logs) under the same root.
    packed.unlink()
    for i in range(len(rows)):
        results.write_frame(root / results.ROWS / "1" / f"{rows['case_id'].iloc[i]}.2.parquet", rows.iloc[i:i + 1])
    shutil.move(root / results.ROWS / "0", root / "0" / results.ROWS)
    frame = results.load(root)
    assert len(frame) == 3 and str(frame["env_time_utc"].dtype) == "datetime64[us, UTC]"
    assert compact(root / results.ROWS / "1").name.startswith(f"{PACKED}.")  # resume's end packs them again
    assert len(results.load(root)) == 3


def test_iso_text_times_of_older_row_files_load_as_timestamps(tmp_path):
    table = pa.table({"case_id": ["a"], "status": ["ok"], "env_time_utc": ["2026-01-02T03:04:05+00:00"],
                      "ceiling_measured_at": ["2026-01-01T00:00:00+00:00"], "finished_at": [1.0e9]})
    (tmp_path / "run" / results.ROWS).mkdir(parents=True)
    pq.write_table(table, tmp_path / "run" / results.ROWS / "a.1.parquet")
    row = results.load(tmp_path / "run").iloc[0]
    assert row["env_time_utc"] == pd.Timestamp("2026-01-02T03:04:05", tz="UTC")
    assert row["ceiling_measured_at"] == pd.Timestamp("2026-01-01", tz="UTC")


def test_a_rows_repro_command_measures_the_same_case(sweep, tmp_path, monkeypatch):
    from attnbench.harness.app.main import main

    row = pd.read_parquet(sweep / results.ROWS / "1").sort_values("impl").iloc[-1]  # mha/sdpa of a 2-case job
    args = shlex.split(row["repro"])
    assert args[0] == "attnbench" and "impl=sdpa" in args and "measure=quick" in args
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "again"
    assert main([*args[1:], f"hydra.run.dir={out}"]) == 0
    again = results.load(out)
    assert len(again) == 1 and again["case_id"].iloc[0] == row["case_id"]
    assert again["repro"].iloc[0] == row["repro"]


def test_the_summary_and_the_reports_cases_table_carry_each_rows_repro(sweep):
    from attnbench.harness.report.tables.views import cases_table
    from attnbench.harness.sweep.summary import summarize

    frame = results.load(sweep)
    text = summarize(sweep).markdown()
    assert all(f"`{command}`" in text for command in frame["repro"])
    table = cases_table(frame.assign(speedup=1.0, mem_ratio=1.0), baseline_label="mha/eager")
    assert sorted(table.raw["repro"]) == sorted(frame["repro"])  # cases.csv
