"""The one declared row schema: real rows match it, CPU and GPU row files concatenate with plain
pandas, the timing mode splits cases, and the failure null-out and the summary come from it."""

from __future__ import annotations

import dataclasses
import io
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from attnbench.harness import results
from attnbench.harness.measure import runner
from attnbench.harness.measure.case import Case, case_label
from attnbench.harness.measure.runner import RunContext, run_case
from attnbench.harness.results import schema
from attnbench.harness.results.conform import to_table
from attnbench.harness.sweep.job import measure_settings, run_job
from attnbench.harness.sweep.plan import plan_cases
from attnbench.harness.sweep.progress import SUMMARY_COLUMNS, summary_table
from tests.test_run import _job_cfg
from attnbench.variants.registry import VARIANTS
from attnbench.variants.shape import ModelShape

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "report_sweep"


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory) -> Path:
    """A real tiny CPU run: one ok case (MLA absorbed decode) of the smoke experiment."""
    root = tmp_path_factory.mktemp("cpu_run")
    run_job(_job_cfg(variant="mla", impl="absorbed", phase="decode"), job_dir=root, root=root, log=io.StringIO())
    return root


def _filled(column: schema.Column) -> object:
    """A non-null value of the column's kind, as a GPU run fills every column."""
    return {"string": "x", "int64": 3, "float64": 1.5, "bool": True, "list<float64>": [1.0, 2.0],
            "timestamp": datetime(2026, 1, 1, tzinfo=timezone.utc)}[column.kind]


def _gpu_row() -> dict[str, object]:
    row = {c.name: _filled(c) for c in schema.COLUMNS}
    row.update(case_id="gpu0", status="ok", timing="cuda_graph", device="cuda:0", env_device_name="NVIDIA H100")
    return row


def test_the_docs_page_is_the_generated_schema():
    assert (ROOT / "docs" / "results-schema.md").read_text() == schema.markdown(), \
        "regenerate it: python -m attnbench.harness.results.schema > docs/results-schema.md"


def test_a_real_row_file_has_every_column_in_order_with_its_declared_type(cpu_run):
    (path,) = results.row_files([cpu_run])
    written = pq.read_schema(path)
    assert written.names == list(schema.NAMES)
    for field in written:
        assert field.type == schema.BY_NAME[field.name].arrow_type, field.name
        assert not pa.types.is_null(field.type), f"{field.name} is null-typed"
    row = results.load(cpu_run).iloc[0]
    assert row.status == "ok" and row.timing == "cpu_wall" and not row.l2_flush
    assert isinstance(row.finished_at, pd.Timestamp) and str(row.finished_at.tz) == "UTC"
    assert pd.isna(row.nvml_power_mean_w)  # a CPU has no NVML: a typed null, not a null type
    frame = results.load(cpu_run)
    for column in schema.COLUMNS:
        assert str(frame[column.name].dtype) == schema.PANDAS_DTYPES[column.kind], column.name


def test_identity_columns_come_first_and_nothing_is_declared_twice():
    first = schema.NAMES[:len(schema.IDENTITY) + 1]
    assert first == ("case_id", *schema.IDENTITY)
    assert "host" not in schema.NAMES and "device_index" not in schema.NAMES  # env_host, env_device_index
    assert all(c.unit for c in schema.COLUMNS if c.kind == "float64" and c.group in ("timing", "overhead"))


def test_cpu_and_gpu_row_files_concatenate_with_plain_pandas(cpu_run, tmp_path):
    rows = tmp_path / "rows"
    rows.mkdir()
    for path in results.row_files([cpu_run]):
        (rows / path.name).write_bytes(path.read_bytes())
    results.write_row(tmp_path, _gpu_row())
    files = sorted(rows.glob("*.parquet"))
    assert len(files) == 2
    each = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    folder = pd.read_parquet(rows)
    table = ds.dataset(rows, format="parquet").to_table()
    assert len(each) == len(folder) == table.num_rows == 2
    assert set(folder["env_device_name"]) == {"NVIDIA H100", results.load(cpu_run).iloc[0].env_device_name}
    assert folder["nvml_power_mean_w"].notna().sum() == 1


def test_a_graph_timed_and_a_plain_timed_case_are_different_cases():
    shape = ModelShape(hidden=64, heads=4, head_dim=16)
    plain = Case(variant="mha", impl="eager", compile=None, phase="decode", model="tiny", shape=shape, batch=1,
                 seq=64, decode_len=1, dtype="bfloat16", device="cuda:0", timing="cuda_events")
    graph = plain.replace(timing="cuda_graph")
    flushed = plain.replace(l2_flush=True)
    uses = VARIANTS.get("mha").uses
    assert len({plain.case_id(uses), graph.case_id(uses), flushed.case_id(uses)}) == 3
    assert plain.case_id(uses) == plain.replace(device="cuda:1").case_id(uses)  # not the device index
    assert graph.label() == case_label(graph.columns()) and graph.label().endswith(" cuda_graph")
    with pytest.raises(ValueError, match="timing='cuda_graph' does not apply to device='cpu'"):
        plain.replace(device="cpu", timing="cuda_graph")


def test_plan_puts_the_configured_timing_in_each_case():
    (case,) = plan_cases(_job_cfg(variant="mha", impl="eager", phase="decode"))
    assert (case.timing, case.l2_flush) == ("cpu_wall", False)
    assert set(case.identity(VARIANTS.get("mha").uses)) >= {"timing", "l2_flush"}


def _one_case(**over):
    cfg = _job_cfg(variant="mla", impl="absorbed", phase="decode", **over)
    (case,) = plan_cases(cfg)
    return case, RunContext(settings=measure_settings(cfg["measure"]))


def _boom(*args, **kwargs):
    raise RuntimeError("injected")


def test_every_measured_column_is_nulled_when_a_case_fails_after_timing(monkeypatch):
    case, ctx = _one_case()
    ok = run_case(case, ctx)
    assert ok["status"] == "ok" and ok["latency_ms"] is not None
    monkeypatch.setattr(runner, "derive", _boom)  # fails after every sample was taken
    failed = run_case(case, ctx)
    assert failed["status"] == "error" and "injected" in failed["reason"]
    assert list(failed) == list(schema.NAMES)
    assert {k: failed[k] for k in schema.MEASURED if failed[k] is not None} == {}
    assert failed["numerics_rel_err"] is not None  # not a measurement of speed: kept


def test_every_column_the_timed_step_fills_is_declared_measured_or_overhead(monkeypatch):
    """A new column filled by the measurement but not declared ``measured`` fails here, before it
    can leak a number from a failed case into a table."""
    case, ctx = _one_case()
    ok = run_case(case, ctx)
    monkeypatch.setattr(runner, "measure", _boom)  # fails just before the samples
    before = run_case(case, ctx)
    assert before["status"] == "error"
    from_timing = {k for k in schema.NAMES if ok[k] is not None and before[k] is None}
    assert {"latency_ms", "samples_ms", "peak_mem_bytes"} <= from_timing
    undeclared = sorted(k for k in from_timing if not schema.BY_NAME[k].measured
                        and schema.BY_NAME[k].group != "overhead")
    assert undeclared == []


def test_the_summary_columns_come_from_the_schema(cpu_run):
    assert set(SUMMARY_COLUMNS) == set(schema.SUMMARY) and SUMMARY_COLUMNS[-1] == "reason"
    header = summary_table(results.load(cpu_run).to_dict("records")).splitlines()[0].split()
    assert header and set(header) <= set(schema.SUMMARY)


def test_the_shape_columns_are_model_shape_fields_or_declared_columns_and_cover_what_variants_use():
    from attnbench.variants.registry import family_shape_keys

    fields = {f.name for f in dataclasses.fields(ModelShape)}
    declared = family_shape_keys()
    assert set(schema.SHAPE) <= fields | {k for k, key in declared.items() if key.column}
    used = {key for name in VARIANTS.names() for key in VARIANTS.get(name).uses}
    # A family's other keys travel in the family_shape column (gdn, kda).
    assert used <= set(schema.SHAPE) | (set(declared) - fields)


def test_model_shape_holds_only_universal_fields_and_family_keys_keep_their_columns():
    fields = {f.name for f in dataclasses.fields(ModelShape)}
    assert fields == {"hidden", "heads", "head_dim", "kv_heads", "num_layers", "rope_theta", "rope_layout", "qkv_bias",
                      "layer_pattern", "kv_dtype", "name", "weights", "extra"}
    # The columns rows had when these keys were ModelShape fields: stored results and case_ids stay readable.
    assert {"d_c", "d_r", "q_rank", "nope_head_dim", "v_head_dim", "sliding_window", "attn_sinks", "sink_tokens",
            "index_heads", "index_head_dim", "index_topk", "csa_rate", "hca_rate", "o_groups", "o_rank",
            "compress_rope_theta"} <= set(schema.SHAPE)
    shape = ModelShape(hidden=64, heads=4, head_dim=16, d_c=32)
    assert shape.d_c == 32 and shape.d_r == 64 and shape == ModelShape(hidden=64, heads=4, head_dim=16, d_c=32, d_r=64)
    assert shape.replace(d_c=512) == ModelShape(hidden=64, heads=4, head_dim=16) and shape.as_dict()["d_r"] == 64


# Rows as the harness wrote them before the declared schema (the report fixture of that time, kept as it was).
OLD_ROWS = ROOT / "tests" / "fixtures" / "old_schema"


def test_rows_written_before_the_schema_are_conformed_on_load():
    old = results.row_files([OLD_ROWS])[0]
    assert "host" in pq.read_schema(old).names  # the fixture predates the schema
    frame = results.load(OLD_ROWS)
    assert list(frame.columns) == list(schema.NAMES)
    assert frame["finished_at"].dt.tz is not None and frame["env_host"].notna().all()
    ok = frame[frame.status == "ok"]
    assert set(ok["timing"]) == {"cpu_wall"} and not ok["l2_flush"].any()


def test_a_column_outside_the_schema_is_refused_on_write(tmp_path):
    with pytest.raises(AssertionError, match=r"columns \['latency_new_ms'\] are not declared"):
        results.write_row(tmp_path, {"case_id": "a", "status": "ok", "latency_new_ms": 1.0})
    assert to_table([{"case_id": "a", "latency_new_ms": 1.0}], strict=False).num_columns == len(schema.NAMES)
