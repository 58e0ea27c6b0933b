"""The one look of every report figure: a fixed colour per variant, a marker and line style per
implementation, journal-ready fonts and column widths.

Colours are Okabe & Ito's colour-blind-safe set ("Color Universal Design", 2008), the palette
Nature Methods recommends (Wong, Nat. Methods 8:441, 2011). The mapping is fixed, never cycled, so
MLA is the same vermillion in every figure of every report; a plugged-in variant or implementation
gets a style picked by a stable hash of its name (the same in every report, though two plug-ins
may share one).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import matplotlib

from attnbench.harness.report.order import IMPL_ORDER, impl_sort_key, variant_order, variant_sort_key  # noqa: F401 - re-exported
from attnbench.variants.registry import families

# Column widths of two-column journals and proceedings (IEEE, ACM, NeurIPS double: ~7 in).
WIDTH_IN: dict[str, float] = {"single": 3.5, "double": 7.0}
# Venue presets: ICML and MLSys columns 3.25 in and text 6.75 in, NeurIPS' one-column text 5.5 in,
# ACM sigconf's column 3.33 in, IEEE's 3.5 in and text 7.16 in. Any other width: a length (--widths 12cm).
VENUE_WIDTH_IN: dict[str, float] = {"icml": 3.25, "icml-double": 6.75, "mlsys": 3.25, "neurips": 5.5,
                                    "acm": 3.33, "acm-double": 7.0, "ieee": 3.5, "ieee-double": 7.16}
LENGTH_UNITS_IN = {"in": 1.0, "cm": 1 / 2.54, "mm": 1 / 25.4, "pt": 1 / 72.27}
_LENGTH = re.compile(r"^(\d+(?:\.\d+)?)(" + "|".join(LENGTH_UNITS_IN) + r")$")
MIN_WIDTH_IN, MAX_WIDTH_IN = 2.5, 7.5  # a column at the narrowest, a letter page's text at the widest
DOUBLE_FROM_IN = 4.5  # from here on panels sit side by side, up to three to a row
# The tallest figure: the text height of a letter or A4 page (about 9 in) less room for its caption.
MAX_HEIGHT_IN = 7.0
MIN_TEXT_PT = 6.0  # no text smaller at print size (the figure is printed at its own width)
DPI = 300  # raster figures at print resolution

OKABE_ITO = {
    "blue": "#0072B2", "orange": "#E69F00", "bluish_green": "#009E73", "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7", "sky_blue": "#56B4E9", "yellow": "#F0E442", "black": "#000000",
}


class _VariantColors(Mapping[str, str]):
    """Each variant's colour as its family declares it (``ReportHints.variants``), read when asked (so that
    importing this module discovers no family). Okabe-Ito's eight colours, fixed per variant."""

    def _colors(self) -> dict[str, str]:
        return {name: hint.color for family in families() for name, hint in family.report.variants.items()
                if hint.color is not None}

    def __getitem__(self, variant: str) -> str:
        return self._colors()[variant]

    def __iter__(self) -> Iterator[str]:
        return iter(self._colors())

    def __len__(self) -> int:
        return len(self._colors())


VARIANT_COLORS: Mapping[str, str] = _VariantColors()
# The low-rank study's factorization methods (variants.convert.methods), fixed the same way.
METHOD_COLORS: dict[str, str] = {
    "svd": OKABE_ITO["blue"], "rsvd": OKABE_ITO["orange"], "qr": OKABE_ITO["bluish_green"],
    "cur": OKABE_ITO["vermillion"], "whitened": OKABE_ITO["reddish_purple"],
}
# Yellow is left out of the fallbacks: it vanishes on white at a line's width.
_FALLBACK_COLORS = (OKABE_ITO["reddish_purple"], OKABE_ITO["sky_blue"], OKABE_ITO["black"])

# Line styles as (offset, (on, off, ...)) in points, distinct in greyscale print too.
# Dash patterns in units of the line width (matplotlib scales them): at 1.2 pt each differs in kind
# (solid, dash, dot, long dash, dash-dot, dash-dot-dot), not just in the length of one gap.
IMPL_STYLES: dict[str, tuple[str, object]] = {
    "eager": ("o", "-"),
    "sdpa": ("s", (0, (4, 2))),
    "absorbed": ("^", (0, (6, 2, 1, 2))),
    "absorbed_sdpa": ("v", (0, (1, 1.6))),
    "absorbed_native": ("p", (0, (2, 1, 2, 3))),
    "absorbed_fold_o": ("D", (0, (9, 2.5))),
    "expanded": ("X", (0, (3, 1.5, 1, 1.5, 1, 1.5))),
}
_FALLBACK_MARKERS = ("P", "*", "h", "<", ">", "8")
_FALLBACK_LINES: tuple[object, ...] = ((0, (1, 1)), (0, (5, 2, 1, 2)), (0, (2, 2)))

# The implementations drawn in the order tables list them (harness.report.order).
assert tuple(IMPL_STYLES) == IMPL_ORDER

RC: dict[str, object] = {
    # TrueType (Type 42) fonts embedded in PDF and PS: journals reject Type 3 fonts.
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    # SVG (the HTML page's figures): glyphs as paths, so the page shows them with no font installed;
    # a fixed salt makes the element ids, and so the page, the same on every build.
    "svg.fonttype": "path",
    "svg.hashsalt": "attnbench",
    "font.family": "DejaVu Sans",  # ships with matplotlib, so every machine draws the same glyphs
    "font.size": 8,  # 8 pt at column width is the usual minimum for print
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.frameon": False,
    "lines.linewidth": 1.2,
    "lines.markersize": 4,
    "axes.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.linewidth": 0.4,
    "grid.alpha": 0.5,
    "savefig.dpi": DPI,
    # No "tight" bbox: a figure keeps exactly its column width (constrained layout fills it).
    "savefig.bbox": None,
    "figure.dpi": 100,
}


@dataclass(frozen=True)
class SeriesStyle:
    color: str
    marker: str
    linestyle: object
    filled: bool  # compiled cases are drawn with hollow markers

    def line_kwargs(self) -> dict[str, object]:
        return {"color": self.color, "marker": self.marker, "linestyle": self.linestyle,
                "markerfacecolor": self.color if self.filled else "white", "markeredgecolor": self.color}


def _stable_pick(name: str, options: tuple) -> object:  # noqa: ANN401 - any option type
    # sha256, not hash(): Python salts str hashes per process, and the pick must not change.
    return options[int(hashlib.sha256(name.encode()).hexdigest(), 16) % len(options)]


def variant_color(variant: str) -> str:
    return VARIANT_COLORS.get(variant) or str(_stable_pick(variant, _FALLBACK_COLORS))


def method_color(method: str) -> str:
    return METHOD_COLORS.get(method) or str(_stable_pick(method, _FALLBACK_COLORS))


def method_sort_key(method: str) -> tuple[int, str]:
    order = tuple(METHOD_COLORS)
    return (order.index(method), "") if method in order else (len(order), method)


def impl_style(impl: str) -> tuple[str, object]:
    if impl in IMPL_STYLES:
        return IMPL_STYLES[impl]
    return str(_stable_pick(impl, _FALLBACK_MARKERS)), _stable_pick(impl, _FALLBACK_LINES)


def series_style(variant: str, impl: str, compile_mode: str = "none") -> SeriesStyle:
    marker, linestyle = impl_style(impl)
    return SeriesStyle(variant_color(variant), marker, linestyle, filled=compile_mode in ("none", "", None))


def width_inches(width: str) -> float:
    """A width by name (``single``, ``neurips``, ...) or as a length (``3.25in``, ``12cm``, ``90mm``, ``400pt``)."""
    if width in WIDTH_IN:
        return WIDTH_IN[width]
    if width in VENUE_WIDTH_IN:
        return VENUE_WIDTH_IN[width]
    found = _LENGTH.match(width.strip())
    inches = float(found.group(1)) * LENGTH_UNITS_IN[found.group(2)] if found else None
    if inches is None or not MIN_WIDTH_IN <= inches <= MAX_WIDTH_IN:
        raise ValueError(f"width={width!r} is not one of: {', '.join([*WIDTH_IN, *VENUE_WIDTH_IN])}, or a length "
                         f"from {MIN_WIDTH_IN} to {MAX_WIDTH_IN} in ({', '.join(LENGTH_UNITS_IN)}: 3.25in, 12cm)")
    return inches


def width_class(width: str) -> str:
    """``single`` (a column: panels stacked, short labels) or ``double`` (up to three panel columns)."""
    return "single" if width_inches(width) < DOUBLE_FROM_IN else "double"


@contextmanager
def figure_style() -> Iterator[None]:
    """The report's rcParams for the duration of a drawing, leaving the caller's untouched."""
    with matplotlib.rc_context(RC):
        yield
