"""``attnbench export --format flashinfer-trace RESULTS --out DIR``: rows as a FlashInfer-Trace folder.

The layout is flashinfer-bench's dataset's: ``definitions/<op_type>/<name>.json``,
``workloads/<op_type>/<name>.jsonl`` (workload-only traces, one per case) and
``traces/<op_type>/<name>.jsonl`` (one per row; skipped and oom rows are left out and counted).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from attnbench.harness.errors import ArgumentParser, UserError, guarded
from attnbench.harness.interop.flashinfer_trace import model
from attnbench.harness.results.paths import check_out_dir

FORMATS = ("flashinfer-trace",)


@dataclass(frozen=True)
class Exported:
    definitions: int
    workloads: int
    traces: int
    left_out: dict[str, int]  # why -> rows


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            for row in frame.to_dict("records")]


def _reference_latency(rows: list[dict[str, Any]]) -> dict[str, float]:
    """case_id without the impl -> the uncompiled eager row's latency (the reference solution)."""
    keys = {}
    for row in rows:
        if row["impl"] == "eager" and row["compile"] == "none" and row["status"] == "ok" \
                and row["latency_ms"] is not None:
            keys[_case_key(row)] = float(row["latency_ms"])
    return keys


def _case_key(row: dict[str, Any]) -> str:
    return f"{model.definition_name(row)}|{row['batch']}|{row['seq']}"


def export(frame: pd.DataFrame, out: Path) -> Exported:
    rows = _records(frame)
    ref_latency = _reference_latency([r for r in rows if model.unsupported(r) is None])
    definitions: dict[str, dict[str, Any]] = {}
    workloads: dict[str, dict[str, dict[str, Any]]] = {}
    traces: dict[str, list[dict[str, Any]]] = {}
    left_out: dict[str, int] = {}
    for row in rows:
        why = model.unsupported(row)
        if why is None and row["status"] in model.NOT_EXPORTED:
            why = f"status {row['status']} (no FlashInfer-Trace counterpart)"
        if why is None and row["status"] not in model.STATUS:
            why = f"status {row['status']} (unknown)"
        if why is None and row["status"] == "ok" and row["latency_ms"] is None:
            why = "status ok without latency_ms (a damaged row: no trace claims a time it lacks)"
        if why is not None:
            left_out[why] = left_out.get(why, 0) + 1
            continue
        name = model.definition_name(row)
        definitions.setdefault(name, model.definition(row))
        shape_key = f"{row['batch']}|{row['seq']}"
        # One workload per case: every impl of a case shares it (the uuid is the first row's case_id).
        work = workloads.setdefault(name, {}).setdefault(shape_key, model.workload(row))
        entry = model.trace(row, reference_latency_ms=ref_latency.get(_case_key(row)))
        entry["workload"] = work
        traces.setdefault(name, []).append(entry)
    for name, body in definitions.items():
        kind = body["op_type"]
        _write(out / "definitions" / kind / f"{name}.json", json.dumps(body, indent=2) + "\n")
        _write(out / "workloads" / kind / f"{name}.jsonl",
               "".join(json.dumps({"definition": name, "workload": w, "solution": None, "evaluation": None}) + "\n"
                       for w in workloads[name].values()))
        _write(out / "traces" / kind / f"{name}.jsonl", "".join(json.dumps(t) + "\n" for t in traces[name]))
    return Exported(len(definitions), sum(len(w) for w in workloads.values()),
                    sum(len(t) for t in traces.values()), left_out)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@guarded("export")
def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="attnbench export",
                            description="Write a results folder's rows in an exchange format "
                                        "(python -m pydoc attnbench.harness.interop.flashinfer_trace).")
    parser.add_argument("results", nargs="+", help="results folders or row files")
    parser.add_argument("--format", required=True, help=f"one of: {', '.join(FORMATS)}")
    parser.add_argument("--out", required=True, help="folder to write")
    args = parser.parse_args(argv)
    done = _export(args.results, fmt=args.format, out=check_out_dir(args.out, flag="--out"))
    print(f"{args.out}: {done.definitions} definitions, {done.workloads} workloads, {done.traces} traces")
    for why, count in done.left_out.items():
        print(f"  left out {count} rows: {why}")
    return 0


def _export(sources: list[str], *, fmt: str, out: Path) -> Exported:
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r} is not known; valid: {', '.join(FORMATS)}")
    from attnbench.harness.results.store import load

    frame = load(sources)
    if frame.empty:
        raise UserError(f"no rows under {' '.join(sources)}; give a results folder or row files")
    return export(frame, out)
