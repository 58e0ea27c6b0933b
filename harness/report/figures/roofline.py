"""Figure 4: the roofline. Arithmetic intensity (cost-model FLOPs per minimum byte) against the
achieved FLOP rate, one point per measured case, under the device's measured copy-bandwidth and
matmul ceilings (``attnbench.harness.measure.calibrate``), per device and dtype (the ceilings depend on both)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from attnbench.harness.report import flagged
from attnbench.harness.report.data import DEVICE
from attnbench.harness.report.figures import Drawn, FigureInput, figure
from attnbench.harness.report.figures.axes import device_title, facet_title, log_axis, subtitle
from attnbench.harness.report.figures.canvas import MAX_SERIES, new_figure, split_variants
from attnbench.harness.report.figures.legend import header, place_legend
from attnbench.harness.report.figures.style import variant_color, variant_sort_key

NEEDS = ("intensity_flops_per_byte", "tflops", "ceiling_copy_gbps", "ceiling_matmul_tflops")
PHASE_MARKERS = {"decode": "o", "prefill": "^"}


def batch_area(batch: pd.Series) -> np.ndarray:
    """Marker area in pt^2 growing with log2(batch): 1 -> 3 pt wide, 64 -> about 8.4 pt."""
    return (3 + 0.9 * np.log2(batch.astype(float).clip(lower=1))) ** 2


def _handles(rows: pd.DataFrame) -> list[Line2D]:
    """What is drawn, no more: markers without lines for the points, one line for the ceilings."""
    def point(label: str, *, color: str = "0.35", marker: str = "o", size: float = 5.0,
              filled: bool = True) -> Line2D:
        return Line2D([], [], linestyle="", marker=marker, markersize=size, color=color, markeredgecolor=color,
                      markerfacecolor=color if filled else "white", label=label)

    batches = sorted(rows["batch"].astype(int).unique())
    shown_batches = batches if len(batches) <= 4 else [batches[0], batches[len(batches) // 2], batches[-1]]
    handles = [header("variant"), *[point(v, color=variant_color(v)) for v in
                                    sorted(rows["variant"].unique(), key=variant_sort_key)],
               header("phase"), *[point(p, marker=PHASE_MARKERS.get(p, "s")) for p in
                                  sorted(rows["phase"].astype(str).unique())],
               header("batch"), *[point(str(b), size=float(np.sqrt(batch_area(pd.Series([b]))[0])))
                                  for b in shown_batches]]
    if (rows["compile"] != "none").any():
        handles.append(point("compiled", filled=False))
    return [*handles, header("lines"), Line2D([], [], color="0.2", linewidth=1.0, label="measured ceilings")]


@figure(name="roofline", order=4, title="Roofline", needs=NEEDS,
        why_missing="the device's ceilings are calibrated only with measure.calibrate=true")
def draw(data: FigureInput, width: str, width_in: float) -> Drawn:
    usable = data.ok.dropna(subset=list(NEEDS))
    usable = usable[(usable["intensity_flops_per_byte"] > 0) & (usable["tflops"] > 0)]
    groups = list(usable.groupby([DEVICE, "dtype"], sort=True))
    if not groups:
        return Drawn(None, "Roofline: left out, no measured case with a positive FLOP count and rate.")
    # Small multiples: a (device, dtype) with more than MAX_SERIES series gets a panel per variant (or
    # variant and implementation path), each under the same ceilings.
    facets = []
    for (device, dtype), rows in groups:
        if rows.groupby(["variant", "impl", "compile"]).ngroups > MAX_SERIES:
            facets += [(device, dtype, rows, label, mine) for label, mine in split_variants(rows)]
        else:
            facets.append((device, dtype, rows, None, rows))
    faceted = any(f[3] is not None for f in facets)
    fig, axes = new_figure(width, width_in, panels=len(facets), ncols=2 if faceted and len(facets) > 1 else None)
    if faceted:
        for ax in axes[1:]:
            ax.sharex(axes[0])
            ax.sharey(axes[0])
    words = []
    for ax, (device, dtype, rows, only, shown) in zip(axes, facets, strict=True):
        # GB/s x FLOP/byte = GFLOP/s: the bandwidth roof and the points share the unit.
        # The memory roof is the faster stream (harness.measure.calibrate.Ceilings.bandwidth_gbps);
        # rows from before the read ceiling existed have only the copy one.
        roof = rows[["ceiling_copy_gbps", "ceiling_read_gbps"]].max(axis=1) if "ceiling_read_gbps" in rows \
            else rows["ceiling_copy_gbps"]
        bandwidth = float(roof.median())
        compute = float(rows["ceiling_matmul_tflops"].median()) * 1e3
        intensity = rows["intensity_flops_per_byte"].astype(float)
        ridge = compute / bandwidth
        x = np.geomspace(min(intensity.min(), ridge) / 2, max(intensity.max(), ridge) * 2, 128)
        ax.plot(x, np.minimum(bandwidth * x, compute), color="0.2", linewidth=1.0)
        # One scatter per variant, phase and compile mode: colour the variant, marker the phase, area
        # the batch (decode at batch 1 and 64 sit at different intensities and must be told apart).
        for (variant, phase, compile_mode), group in shown.groupby(["variant", "phase", "compile"], sort=True):
            color = variant_color(str(variant))
            doubt = flagged.mask(group)
            for part, hollow in ((group[~doubt], False), (group[doubt], True)):
                if part.empty:
                    continue
                # A flagged row is hollow with a dotted edge: here the edge keeps the variant's colour, not
                # the grey of line figures, whose line carries the colour; points alone would lose it, and a
                # figure whose rows are all flagged (a loaded CPU) would no longer tell variants apart.
                face = "none" if hollow else (color if compile_mode == "none" else "white")
                ax.scatter(part["intensity_flops_per_byte"].astype(float), part["tflops"].astype(float) * 1e3,
                           s=batch_area(part["batch"]), marker=PHASE_MARKERS.get(str(phase), "s"), edgecolors=color,
                           facecolors=face, linewidths=0.9 if hollow else 0.7, alpha=0.85,
                           linestyles=(0, (1, 1)) if hollow else "solid",
                           gid=flagged.FLAGGED_GID if hollow else None)
        words.append(f"{device} ({dtype}): copy {bandwidth:.3g} GB/s, matmul {compute:.3g} GFLOP/s, "
                     f"ridge at {ridge:.3g} FLOP/byte")
    for ax, (device, dtype, _, only, _shown) in zip(axes, facets, strict=True):
        log_axis(ax, "x")
        log_axis(ax, "y")
        ax.set_xlabel("arithmetic intensity (FLOP/byte)" if not faceted or width == "double" else "FLOP/byte")
        ax.set_ylabel("achieved rate (GFLOP/s)" if not faceted or width == "double" else "GFLOP/s")
        if only is not None:
            facet_title(ax, only)
        else:
            device_title(ax, f"{device}, {dtype}", width)
    words = list(dict.fromkeys(words))  # one per (device, dtype), however many facets
    devices = sorted(usable[DEVICE].astype(str).unique())
    subtitle(fig, usable, device=devices[0] if len(devices) == 1 else None)
    place_legend(fig, _handles(usable))
    return Drawn(fig, flagged.with_listing("Roofline: each point is one measured case (every implementation and context; colour: "
                      "variant, marker: phase, area: batch; hollow: torch.compile; hollow with a dotted edge: a "
                      "flagged row); x: the "
                      "cost model's FLOPs over its minimum bytes; y: those FLOPs over the median latency. "
                      f"Ceilings as measured on the device: {'; '.join(words)}.", usable))
