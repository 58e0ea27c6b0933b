"""Merge the jobs of one or more sweeps (or runs) into one result set, refusing a case measured twice.

    python -m attnbench.harness.results.merge results/ctx_h100 --out results/paper              # one sweep's jobs
    python -m attnbench.harness.results.merge results/part1 results/part2 --out results/paper   # several sweeps
    python -m attnbench.harness.results.merge results/a results/b --out merged --prefer newest     # keep the later
                                                                                                   # ok row
    python -m attnbench.harness.results.merge results/a results/b --out merged --prefer results/b  # keep b's ok rows

Each job writes only its own files, so nothing is merged while jobs run; this is the one step that
puts them together. One row per case and machine (host and device: two machines' sweeps run under
one ``name=`` are two results of each case, both kept): its ``ok`` row, else its latest attempt (a resumed case's
failed attempt followed by an ``ok`` one is one case, as in ``results.load``). A case with an
``ok`` row in two places on one machine (two sweeps, two jobs of one sweep, or one job run twice
without ``resume``) is a duplicate: the merge names it and both places, writes nothing and exits 2, unless
``--prefer`` says which to keep. Cases that were never measured are simply absent: they are not
results (``python -m attnbench.harness.sweep.status`` lists them).

Writes ``<out>/rows/merged.parquet`` (so ``results.load(out)`` reads it like any run) and
``<out>/manifest.json`` (sources, their jobs, hosts and launchers, counts, duplicates resolved).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from attnbench.harness import results
from attnbench.harness.errors import ArgumentParser, UserError, guarded
from attnbench.harness.results.layout import job_dir_of
from attnbench.harness.text.label import case_label
from attnbench.harness.results.paths import check_out_dir

MERGED = "merged.parquet"
MANIFEST = "manifest.json"
_HELPERS = ["_source", "_origin", "_file"]
# One result per case and machine: the same case from two hosts or devices is two results, not a duplicate.
MACHINE = ["env_host", "env_device_name"]


@dataclass(frozen=True)
class Merged:
    frame: pd.DataFrame  # one row per case
    manifest: dict[str, Any]


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _check_sources(sources: list[Path], out: Path | None) -> None:
    for i, a in enumerate(sources):
        if not a.exists():
            raise UserError(f"no results at {a}")
        for b in sources[i + 1:]:
            if _inside(a, b) or _inside(b, a):
                raise UserError(f"sources {a} and {b} overlap (one is inside the other); give each folder once")
        if out is not None and (_inside(out, a) or _inside(a, out)):
            raise UserError(f"--out {out} overlaps source {a}; write the merged set to its own folder")


def _read(sources: list[Path]) -> pd.DataFrame:
    frames = []
    for source in sources:
        for path in results.row_files([source]):
            frame = results.read_rows([path])
            frames.append(frame.assign(_source=str(source), _origin=str(job_dir_of(path)), _file=str(path)))
    if not frames:
        raise UserError(f"no rows under {', '.join(map(str, sources))}")
    return results.drop_copies(pd.concat(frames, ignore_index=True))  # a row both packed and in its own file


def _resolve(oks: pd.DataFrame, prefer: str | None) -> pd.Series | None:
    """The ok row to keep among several, or None when ``prefer`` doesn't decide."""
    if prefer == "newest":
        return oks.sort_values("finished_at").iloc[-1]
    if prefer is not None:
        chosen = oks[[_inside(Path(f).resolve(), Path(prefer).resolve()) for f in oks["_file"]]]
        if len(chosen) == 1:
            return chosen.iloc[0]
    return None


def merge(sources: list[str | Path], *, prefer: str | None = None, out: Path | None = None) -> Merged:
    """One row per case over ``sources``; raises ``UserError`` naming the first duplicate."""
    paths = [Path(s).resolve() for s in sources]
    _check_sources(paths, Path(out).resolve() if out is not None else None)
    if prefer not in (None, "newest") and not any(_inside(Path(prefer).resolve(), p) for p in paths):
        raise UserError(f"--prefer {prefer!r}: use newest, or a folder among (or inside) the sources")
    rows = _read(paths)
    kept, duplicates, chosen = results.pick_per_case(rows, [*MACHINE, "case_id"],
                                                     choose=lambda oks: _resolve(oks, prefer))
    if duplicates:
        raise results.DuplicateCase(duplicates, fix="keep one with --prefer newest or --prefer <folder>, "
                                                    "or leave a source out")
    resolved = [{"case_id": keep["case_id"], "label": case_label(keep), "kept": keep["_file"],
                 "dropped": sorted(set(oks["_file"]) - {keep["_file"]})} for keep, oks in chosen]
    frame = rows.loc[kept].sort_values(["run_root", "finished_at"]).reset_index(drop=True)
    manifest = {
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "cases": len(frame),
        "status_counts": {str(k): int(v) for k, v in frame["status"].value_counts().items()},
        "prefer": prefer,
        "duplicates_resolved": resolved,
        "sources": [_describe(Path(s), frame[frame["_source"] == str(s)], rows[rows["_source"] == str(s)])
                    for s in paths],
    }
    return Merged(frame=frame.drop(columns=_HELPERS), manifest=manifest)


def _describe(source: Path, kept: pd.DataFrame, read: pd.DataFrame) -> dict[str, Any]:
    def values(column: str) -> list[Any]:
        return sorted({str(v) for v in read[column].dropna()}) if column in read else []

    return {"path": str(source), "row_files": int(read["_file"].nunique()), "rows_kept": len(kept),
            "job_dirs": int(read["_origin"].nunique()), "run_roots": values("run_root"), "hosts": values("env_host"),
            "launchers": values("launcher"), "devices": values("device")}


def write(merged: Merged, out: Path) -> Path:
    out = Path(out)
    existing = [p for p in results.row_files([out]) if p.name != MERGED] if out.exists() else []
    if existing:
        raise UserError(f"--out {out} already holds other results ({existing[0]}); choose an empty folder")
    path = out / results.ROWS / MERGED
    results.write_frame(path, merged.frame)
    results.write_json(out / MANIFEST, merged.manifest)
    return path


@guarded("merge")
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="attnbench merge", description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", metavar="SWEEP_OR_RUN_DIR")
    parser.add_argument("--out", required=True, help="folder for rows/merged.parquet and manifest.json")
    parser.add_argument("--prefer", help="for a case with ok rows in two places: newest, or a source folder to keep")
    args = parser.parse_args(argv)
    # A bad value, an unwritable folder or a full disk: one line from the boundary (harness.errors).
    out = check_out_dir(args.out)
    merged = merge(args.sources, prefer=args.prefer, out=out)
    path = write(merged, out)
    counts = ", ".join(f"{v} {k}" for k, v in merged.manifest["status_counts"].items())
    print(f"merged {merged.manifest['cases']} cases ({counts}) from {len(args.sources)} source(s) into {path}")
    for item in merged.manifest["duplicates_resolved"]:
        print(f"  duplicate {item['label']}: kept {item['kept']}")
    print("cases never measured are not in it: python -m attnbench.harness.sweep.status <sweep> lists them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
