"""``python -m attnbench.harness.selfcheck [--dry-run] [--out DIR] [--skip STEP ...]``: run every acceptance step,
each time-limited, and write ``summary.md`` and ``summary.json`` in the output folder. Exit 0 when no
step failed (skips are listed with their reason), 1 otherwise, 2 for a usage error."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from attnbench.harness.errors import ArgumentParser, UserError, guarded
from attnbench.harness.results.paths import check_out_dir
from attnbench.harness.selfcheck.steps import Result, plan, run_step


@guarded("selfcheck")
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="attnbench selfcheck", description="Prove the GPU paths on this machine.")
    parser.add_argument("--dry-run", action="store_true", help="device=cpu and tiny shapes; skip what needs CUDA")
    parser.add_argument("--out", help="output folder (default: results/selfcheck_<time>)")
    parser.add_argument("--skip", action="append", default=[], metavar="STEP", help="leave a step out (repeatable)")
    args = parser.parse_args(argv)
    out = args.out if args.out is not None else f"results/selfcheck_{datetime.now(UTC):%Y-%m-%d_%H-%M-%S}"
    out = check_out_dir(out, flag="--out")  # a file, read-only or empty: one line before any step runs
    names = [s.name for s in plan(out.resolve(), dry_run=args.dry_run)]
    unknown = [s for s in args.skip if s not in names]
    if unknown:
        raise UserError(f"--skip {unknown[0]!r} is not a step; valid: {', '.join(names)}")
    out.mkdir(parents=True, exist_ok=True)
    if not args.dry_run and not _cuda_present():
        print("note: no CUDA device here (torch.cuda.is_available() is False): the GPU steps fail by design; "
              "attnbench selfcheck --dry-run rehearses them on the CPU", flush=True)
    steps = plan(out.resolve(), dry_run=args.dry_run)
    results: list[Result] = []
    for step in steps:
        if step.name in args.skip:
            result = Result(step.name, "skip", 0.0, " ".join(step.argv), "--skip")
        else:
            result = run_step(step, out.resolve())
        results.append(result)
        print(f"{result.outcome:>7}  {result.name:<16} {result.seconds:6.1f} s  {result.detail}", flush=True)
    _write_summary(out, results, dry_run=args.dry_run)
    print(f"summary: {out / 'summary.md'}")
    return 1 if any(r.outcome in ("fail", "timeout") for r in results) else 0


def _cuda_present() -> bool:
    import torch  # here: --help and usage errors stay fast

    return torch.cuda.is_available()


def _write_summary(out: Path, results: list[Result], *, dry_run: bool) -> None:
    when = datetime.now(UTC).isoformat(timespec="seconds")
    (out / "summary.json").write_text(json.dumps({"dry_run": dry_run, "finished_at": when,
                                                  "steps": [asdict(r) for r in results]}, indent=2))
    lines = [f"# attnbench selfcheck{' (dry run)' if dry_run else ''}, {when}", "",
             "| step | outcome | seconds | detail |", "|---|---|---|---|"]
    lines += [f"| {r.name} | {r.outcome} | {r.seconds:.1f} | {r.detail.replace('|', '/')} |" for r in results]
    for r in results:
        if r.tail:
            lines += ["", f"## {r.name}", "", "```", *r.tail, "```"]
    (out / "summary.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
