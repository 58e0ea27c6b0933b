"""FlashInfer-Trace out and back in: the committed report fixture's rows exported, every file checked
against flashinfer-bench's own schema (tests/fixtures/flashinfer_trace/schema.json, the JSON schema of
its pydantic models Definition, Workload and Trace, flashinfer-bench 0.1.2), imported back as the same
cases, and each Definition's reference run() checked against attnbench's kernels."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from attnbench.harness.app.main import main as attnbench
from attnbench.harness.errors import UserError
from attnbench.harness.interop.flashinfer_trace import load, model
from attnbench.harness.interop.flashinfer_trace.export import export

FIXTURES = Path(__file__).parent / "fixtures"
ROWS = FIXTURES / "report_sweep" / "rows" / "rows.parquet"
SCHEMA = json.loads((FIXTURES / "flashinfer_trace" / "schema.json").read_text())


def _errors(value, schema, root, where="$"):  # noqa: ANN001, C901 - the subset of JSON Schema pydantic emits
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[1]] | {k: v for k, v in schema.items() if k != "$ref"}
    if "anyOf" in schema:
        tries = [_errors(value, option, root, where) for option in schema["anyOf"]]
        return [] if any(not t for t in tries) else [f"{where}: matches no option ({tries})"]
    kinds = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
    kind = schema.get("type")
    if kind == "integer" and not (isinstance(value, int) and not isinstance(value, bool)):
        return [f"{where}: {value!r} is not an integer"]
    if kind == "number" and not (isinstance(value, int | float) and not isinstance(value, bool)):
        return [f"{where}: {value!r} is not a number"]
    if kind in kinds and not isinstance(value, kinds[kind]):
        return [f"{where}: {value!r} is not {kind}"]
    out = []
    if "const" in schema and value != schema["const"]:
        out.append(f"{where}: {value!r} != {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{where}: {value!r} not in {schema['enum']}")
    if "minimum" in schema and isinstance(value, int | float) and not math.isnan(value) and value < schema["minimum"]:
        out.append(f"{where}: {value} < {schema['minimum']}")
    if "minLength" in schema and len(value) < schema["minLength"]:
        out.append(f"{where}: empty")
    if isinstance(value, dict):
        out += [f"{where}: lacks {key}" for key in schema.get("required", []) if key not in value]
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if key in props:
                out += _errors(item, props[key], root, f"{where}.{key}")
            elif isinstance(extra, dict):
                out += _errors(item, extra, root, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            out += _errors(item, schema["items"], root, f"{where}[{i}]")
    return out


def _validate(kind: str, value: dict) -> None:
    assert not (errors := _errors(value, SCHEMA[kind], SCHEMA[kind])), errors


def _evaluation_rules(trace: dict) -> None:
    """flashinfer-bench's Evaluation validator: correctness with PASSED/INCORRECT_NUMERICAL, performance with PASSED."""
    ev = trace["evaluation"]
    assert ("correctness" in ev) == (ev["status"] in ("PASSED", "INCORRECT_NUMERICAL")), ev
    assert ("performance" in ev) == (ev["status"] == "PASSED"), ev


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fitrace")
    assert attnbench(["export", "--format", "flashinfer-trace", str(ROWS), "--out", str(out)]) == 0
    return out


def test_every_exported_file_matches_flashinfer_benchs_schema(exported: Path) -> None:
    definitions = list((exported / "definitions").rglob("*.json"))
    assert len(definitions) == 8  # {mha, mqa, gqa, mla} x {decode, prefill} at the tiny shape
    for path in definitions:
        _validate("Definition", json.loads(path.read_text()))
    traces = [json.loads(line) for path in (exported / "traces").rglob("*.jsonl") for line in path.open()]
    works = [json.loads(line) for path in (exported / "workloads").rglob("*.jsonl") for line in path.open()]
    for entry in traces + works:
        _validate("Trace", entry)
    for entry in traces:
        _evaluation_rules(entry)
    frame = pd.read_parquet(ROWS)
    assert len(traces) == (frame["status"] != "skipped").sum()  # the one skipped row is left out
    assert {t["evaluation"]["status"] for t in traces} == {"PASSED"}
    assert all(w["solution"] is None and w["evaluation"] is None for w in works)


def test_a_trace_carries_the_gates_absolute_error_and_nan_only_without_one() -> None:
    from attnbench.harness.interop.flashinfer_trace import model

    row = pd.read_parquet(ROWS).query("status == 'ok'").iloc[0].to_dict()
    row.pop("numerics_max_abs_err", None)  # a row written before the column
    assert math.isnan(model.trace(row, reference_latency_ms=None)["evaluation"]["correctness"]["max_absolute_error"])
    row["numerics_max_abs_err"] = 3.5e-7
    correctness = model.trace(row, reference_latency_ms=None)["evaluation"]["correctness"]
    assert correctness["max_absolute_error"] == 3.5e-7
    assert correctness["max_relative_error"] == row["numerics_rel_err"]


def test_import_gives_the_exported_cases_back(exported: Path) -> None:
    frame = pd.read_parquet(ROWS)
    frame = frame[frame["status"] != "skipped"]
    want = {(r.variant, r.phase, r.dtype, int(r.batch), int(r.seq)) for r in frame.itertuples()}
    cases = load.case_overrides(load.read_folder(exported))
    got = set()
    for case in cases:
        keys = dict(o.split("=", 1) for o in case)
        got.add((keys["variant"], keys["phase"], keys["dtype"], int(keys["batch"]), int(keys["seq"])))
        assert keys["model"] == "tiny" and keys["heads"] == "4" and keys["head_dim"] == "16"
    assert got == want and len(cases) == len(want)
    commands = load.sweep_commands(load.read_folder(exported), impl="sdpa")
    assert all(c.startswith("attnbench -m ") and " impl=sdpa " in c for c in commands)


@pytest.mark.parametrize(("variant", "impls"), [("gqa", ("eager", "sdpa")), ("mla", ("absorbed", "absorbed_sdpa"))])
@pytest.mark.parametrize("phase", ["decode", "prefill"])
def test_reference_run_agrees_with_attnbench_kernels(exported: Path, variant: str, impls: tuple[str, ...],
                                                    phase: str) -> None:
    folder = load.read_folder(exported)
    body = next(d for name, d in folder.definitions.items() if f"_{variant}_{phase}_" in name)
    for impl in impls:
        result = load.check_against_reference(body, impl, axes={"batch_size": 2, "len_kv": 7})
        assert result.ok and result.rel_err < 1e-5, result


def test_reference_catches_a_wrong_kernel(exported: Path) -> None:
    """The oracle fails a kernel that attends without the causal mask (the prefill queries see the future)."""
    body = next(d for name, d in load.read_folder(exported).definitions.items() if "_gqa_prefill_" in name)
    inputs = load.random_inputs(body, {"batch_size": 1, "len_kv": 6})
    from attnbench.harness.measure.numerics import relative_error
    from attnbench.harness.interop.flashinfer_trace.reference import load_run
    import torch.nn.functional as F

    q, k, v = (inputs[n].transpose(1, 2) for n in ("q", "k", "v"))
    wrong = F.scaled_dot_product_attention(q, k, v, scale=inputs["sm_scale"], enable_gqa=True).transpose(1, 2)
    assert relative_error(wrong, load_run(body["reference"])(**inputs)) > 1e-2


def test_bad_inputs_are_one_line_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert attnbench(["export", "--format", "csv", str(ROWS), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "error: --format 'csv' is not known; valid: flashinfer-trace\n"
    assert attnbench(["import-trace", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path} has no definitions/ folder")
    with pytest.raises(UserError, match="has no definitions/ folder"):
        load.read_folder(tmp_path)
    row = pd.read_parquet(ROWS).iloc[0].to_dict() | {"variant": "dsa"}
    assert "dsa has no FlashInfer-Trace mapping" in model.unsupported(row)


def test_the_schema_check_refuses_a_broken_definition(exported: Path) -> None:
    body = json.loads(next((exported / "definitions").rglob("*.json")).read_text())
    body["inputs"]["q"]["dtype"] = "float64"  # not a FlashInfer-Trace dtype
    del body["reference"]
    errors = _errors(body, SCHEMA["Definition"], SCHEMA["Definition"])
    assert any("lacks reference" in e for e in errors) and any("float64" in e for e in errors)


def test_import_trace_prints_the_sweeps_and_checks_only_kernels_that_apply(exported: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    assert attnbench(["import-trace", str(exported), "--impl", "sdpa", "--check"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("attnbench -m ") for line in out) == 20  # 8 definitions, split by batch
    checks = [line for line in out if line.startswith("# ")]
    assert len(checks) == 8 and sum("(ok, tol" in line for line in checks) == 6  # gqa-family kernels
    assert sum("not checked (impl sdpa has no MLA kernel" in line for line in checks) == 2


def test_imported_cases_have_the_exported_rows_case_ids(exported: Path) -> None:
    """The overrides compose, through attnbench's own config and planner, to the very cases exported."""
    from hydra import compose, initialize_config_dir

    from attnbench.harness.sweep.plan import plan_cases
    from attnbench.variants.presets import conf_root
    from attnbench.variants.registry import VARIANTS

    frame = pd.read_parquet(ROWS)
    want = set(frame.loc[frame["impl"] == "eager", "case_id"])
    got = set()
    with initialize_config_dir(config_dir=str(conf_root()), version_base="1.3"):
        for case_overrides in load.case_overrides(load.read_folder(exported)):
            for case in plan_cases(compose("config", overrides=[*case_overrides, "impl=eager", "device=cpu"])):
                got.add(case.case_id(VARIANTS.get(case.variant).uses))
    assert got == want and len(want) == 32
