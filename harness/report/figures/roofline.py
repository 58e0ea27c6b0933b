"""Figure 4: the roofline. Arithmetic intensity (cost-model FLOPs per minimum byte) against the
achieved FLOP rate, one point per measured case, under the device's measured copy-bandwidth and
matmul ceilings (``harness.measure.calibrate``), per device and dtype (the ceilings depend on both)."""

from __future__ import annotations

import numpy as np
from matplotlib.lines import Line2D

from harness.report import flagged
from harness.report.data import DEVICE
from harness.report.figures import Drawn, FigureInput, figure
from harness.report.plotting import (MAX_SERIES, device_title, facet_title, legend, log_axis, new_figure, series,
                                     split_variants, subtitle)
from harness.report.style import series_style

NEEDS = ("intensity_flops_per_byte", "tflops", "ceiling_copy_gbps", "ceiling_matmul_tflops")


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
        for (variant, impl, compile_mode), group in series(shown):
            style = series_style(variant, impl, compile_mode).line_kwargs() | {"linestyle": ""}
            doubt = flagged.mask(group)
            ax.plot(group["intensity_flops_per_byte"][~doubt], group["tflops"][~doubt].astype(float) * 1e3, **style)
            if doubt.any():  # a flagged row: hollow and grey (harness.report.flagged)
                ax.plot(group["intensity_flops_per_byte"][doubt], group["tflops"][doubt].astype(float) * 1e3,
                        **style | {"markerfacecolor": "none", "markeredgecolor": flagged.FLAGGED_EDGE},
                        gid=flagged.FLAGGED_GID)
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
    legend(fig, usable, colour_key=not faceted, extra=[Line2D([], [], color="0.2", linewidth=1.0, label="measured ceilings")])
    return Drawn(fig, flagged.with_listing("Roofline: each point is one measured case (every phase, batch and context); x: the "
                      "cost model's FLOPs over its minimum bytes; y: those FLOPs over the median latency. "
                      f"Ceilings as measured on the device: {'; '.join(words)}.", usable))
