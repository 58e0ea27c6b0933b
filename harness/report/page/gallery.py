"""``python -m attnbench.harness.report.page.gallery [--out docs/figures]``: the docs' gallery, every figure kind drawn
by the report's own code (``attnbench.harness.report.figures.draw``) at single-column width from the committed
real-shape result set ``tests/fixtures/gallery/`` (CPU, one layer, DeepSeek-V2-Lite, -V3.2-Exp,
-V4-Flash and Qwen3-Next shapes; measured by ``tests/fixtures/make_gallery.sh``, which then runs this). It writes a
small PNG per shot and ``README.md`` beside them: each figure's claim, selection and caption, and how
loaded the machine was. A shot draws one model's rows, so a figure never mixes two models' curves
(the crossover at V3.2's shape and at V4-Flash's are two shots). A registered figure the set cannot
feed (energy: no NVML on a CPU; the low-rank study's) is listed as left out, never drawn empty.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from attnbench.harness import results
from attnbench.harness.measure.trust import count_line
from attnbench.harness.report import figures
from attnbench.harness.report.analysis.baseline import Baseline, default_variant, with_ratios
from attnbench.harness.report.analysis.capacity import RESERVE
from attnbench.harness.report.data import prepare
from attnbench.harness.report.figures import FigureInput
from attnbench.harness.report.figures.style import figure_style
from attnbench.harness.text.units import human_bytes

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = (ROOT / "tests" / "fixtures" / "gallery",)
GALLERY_DPI = 120  # legible on screen (420 px wide), tens of kB each: the docs stay small in git
V2_LITE, V32, V4_FLASH = "deepseek_v2_lite", "deepseek_v32_exp", "deepseek_v4_flash"
QWEN3_NEXT = "qwen3_next_80b_a3b"
# The budget of the capacity and throughput figures: float32 at a 1k context, 8 GiB holds MHA ~13
# sequences, GQA ~58, MLA ~97 at V2-Lite's shape (conf/experiment/throughput_budget.yaml), the rungs the
# fixture's batch ladder brackets; a GPU's 80 GB in bf16 at 4k holds about six times as many of each.
BUDGET_BYTES = 8 * 2**30


@dataclass(frozen=True)
class Shot:
    name: str  # <out>/<name>.png
    figure: str  # a registered figure
    model: str  # the model whose rows it draws
    claim: str  # what the figure is there to show, for the README
    budget_bytes: int | None = None


SHOTS = (
    Shot("throughput_budget", "throughput_budget", V2_LITE,
         "MLA's smaller cache holds more sequences in a memory budget, so more tokens per second (DeepSeek-V2, "
         "section 3.2.3), at DeepSeek-V2-Lite's shape against its MHA and GQA equivalents.", BUDGET_BYTES),
    Shot("sparse_crossover", "sparse_crossover", V4_FLASH,
         "Where DeepSeek-V4-Flash's sparse (DSA, top 512) and compressed (CSA, HCA) attention start to beat "
         "dense MLA at the same head dims."),
    Shot("sparse_crossover_v32", "sparse_crossover", V32,
         "The same crossover at DeepSeek-V3.2-Exp's shape (128 heads, DSA keeping the top 2,048 tokens)."),
    Shot("latency", "latency", V2_LITE, "Decode step latency against context at DeepSeek-V2-Lite's shape."),
    Shot("kv_cache", "kv_cache", V2_LITE, "KV-cache bytes per token and in total: MLA's latent against "
                                          "MHA/GQA/MQA heads, cost model beside the measured cache."),
    Shot("peak_memory", "peak_memory", V2_LITE, "Peak memory of one layer against context, and the longest "
                                                "context each variant fits in the budget.", BUDGET_BYTES),
    Shot("roofline", "roofline", V2_LITE, "Each case against the CPU's calibrated matmul and bandwidth ceilings."),
    Shot("bandwidth_fraction", "bandwidth_fraction", V2_LITE, "Share of the calibrated read bandwidth each "
                                                              "decode step reaches."),
    Shot("decode_throughput", "decode_throughput", V2_LITE, "Decode tokens per second against batch at a 1k "
                                                            "context."),
    Shot("latency_distribution", "latency_distribution", V2_LITE,
         "Every timed sample behind the medians: how noisy a loaded CPU's timings are."),
    Shot("state_vs_kv", "state_vs_kv", QWEN3_NEXT,
         "A hybrid's linear layers keep a fixed state while full attention's KV grows: Qwen3-Next's Gated "
         "DeltaNet step stays flat from 1k to 128k while its gated GQA layer's grows, and whole-model cache per "
         "sequence for seven models from the cost model."),
)


def baseline() -> Baseline:
    """The families' default baseline variant, timed through SDPA: the fixture measures the dense
    variants with SDPA only."""
    return Baseline(variant=default_variant(), impl="sdpa")


def shots() -> list[Shot]:
    """``SHOTS``, then every other registered figure of measured rows over V2-Lite's rows (a figure
    added later is in the gallery, or listed as left out, without an edit here)."""
    named = {s.figure for s in SHOTS}
    extra = [Shot(spec.name, spec.name, V2_LITE, spec.title + ".") for spec in figures.specs()
             if spec.rows == "measured" and spec.name not in named]
    return [*SHOTS, *extra]


@dataclass(frozen=True)
class Drawn:
    shot: Shot
    path: Path
    title: str
    caption: str


def gallery(out: Path, *, sources: Sequence[Path] = FIXTURES) -> tuple[list[Path], dict[str, str]]:
    """Draw each shot from ``sources`` into ``out/<name>.png`` and ``out/README.md``; returns the files
    written (PNGs, then the README) and, per figure left out, why."""
    rows = results.load(list(sources))
    out.mkdir(parents=True, exist_ok=True)
    drawn: list[Drawn] = []
    left_out: dict[str, str] = {}
    for spec in figures.specs():
        if spec.rows != "measured":
            left_out[spec.name] = "the gallery holds no low-rank study rows"
    for shot in shots():
        if not (rows["model"] == shot.model).any():
            left_out[shot.name] = f"no {shot.model} rows in {', '.join(str(s) for s in sources)}"
            continue
        ok, _ = with_ratios(prepare(rows, {"model": [shot.model]}).ok, baseline())
        data = FigureInput(ok=ok, capacity=pd.DataFrame(), budget_bytes=shot.budget_bytes, reserve=RESERVE)
        result = figures.draw(shot.figure, data, width="single")
        if result.figure is None:
            left_out[shot.name] = result.caption
            continue
        path = out / f"{shot.name}.png"
        with figure_style():
            result.figure.savefig(path, dpi=GALLERY_DPI, metadata={"Software": "attnbench"})
        drawn.append(Drawn(shot, path, figures.FIGURES.get(shot.figure).title, result.caption))
    readme = out / "README.md"
    readme.write_text(_readme(drawn, left_out, prepare(rows).ok), encoding="utf-8")
    return [d.path for d in drawn] + [readme], left_out


def _machine(ok: pd.DataFrame) -> str:
    """Where and how loaded: device, cores, the load average the rows recorded, the flags they carry."""
    first = ok.iloc[0]
    loads = pd.to_numeric(ok.get("load_start", pd.Series(dtype=float)), errors="coerce").dropna()
    load = (f", 1-minute load average {loads.min():.1f}-{loads.max():.1f} tasks per core while measuring"
            if not loads.empty else "")
    others = pd.to_numeric(ok.get("others_cpu_share", pd.Series(dtype=float)), errors="coerce").dropna()
    if not others.empty:  # what other processes took of our CPUs during the cases themselves
        load += f", other processes using {others.min():.0%}-{others.max():.0%} of its CPUs during the cases"
    flags = count_line(list(ok["flags"])) if "flags" in ok.columns else ""
    busy = "flags" in ok.columns and ok["flags"].fillna("").astype(str).str.contains("busy").any()
    return (f"{first['env_device_name']} ({int(first['env_cpu_count'])} cores, "
            f"{'shared with other jobs' if busy else 'no other heavy job running'}{load}), "
            f"{first['dtype']}, one thread, measure=quick, {len(ok)} measured rows. "
            + (f"{flags} Flagged rows are drawn with hollow grey markers and named under each figure"
               + (": busy, other processes took the CPU while the case ran; noisy," if busy else "; noisy:")
               + " the 95% confidence interval of its median is wider than the 5% target, or unbounded (no CI: "
               "too few samples in measure=quick's budget). Their medians are real timings; read them as rough."
               if flags else "No row is flagged."))


def _readme(drawn: Sequence[Drawn], left_out: dict[str, str], ok: pd.DataFrame) -> str:
    lines = [
        "# Gallery",
        "",
        ("Every figure kind of `attnbench report`, at single-column width (3.5 in), drawn by the report's own "
         "code from the committed result set `tests/fixtures/gallery/`: one attention layer at real model "
         "shapes (DeepSeek-V2-Lite, DeepSeek-V3.2-Exp, DeepSeek-V4-Flash, Qwen3-Next-80B-A3B), measured on a CPU. Made by"),
        "",
        "    bash tests/fixtures/make_gallery.sh     # measure the rows again (7 min quiet, 30 loaded), then draw",
        "    python -m attnbench.harness.report.page.gallery   # draw from the committed rows only",
        "",
        (f"Measured on {_machine(ok)} These are CPU timings of float32 kernels: read the "
         "ratios between variants, not the absolute times, and not as a GPU's (on a CPU, MLA's absorbed step at "
         "these batches is bound by its matmuls over the latent, not by reading its cache); the comparison at a GPU's real budget is the "
         "command in `docs/report.md`, section 'Decode throughput at a memory budget'. Budget of the "
         f"peak-memory and throughput figures: {human_bytes(BUDGET_BYTES)} (float32, 1k context; "
         "`harness/report/page/gallery.py`)."),
        "",
    ]
    for d in drawn:
        lines += [f"## {d.title} ({d.shot.model})", "", d.shot.claim, "", f"![{d.title}]({d.path.name})", "",
                  d.caption, ""]
    if left_out:
        lines += ["## Left out", ""] + [f"- `{name}`: {why}" for name, why in left_out.items()] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m attnbench.harness.report.page.gallery",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/figures", help="folder for the PNGs and README.md (default: "
                                                               "docs/figures)")
    args = parser.parse_args(argv)
    written, left_out = gallery(Path(args.out))
    for path in written:
        print(path)
    for name, why in left_out.items():
        print(f"left out {name}: {why}")


if __name__ == "__main__":
    main()
