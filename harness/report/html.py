"""The report as one self-contained HTML page: figures embedded as data URIs, tables inline, no
script or style from anywhere else, so it opens from a file in any browser with no server.

A small inline script counts, once the page has loaded, the images that decoded
(``complete && naturalWidth > 0``) and writes ``N/M`` into ``<body data-images-loaded>``: a
headless browser's DOM dump then tells whether every figure rendered.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.report.tablefmt import to_html
from harness.report.tables import Table

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1.5em; }
caption { caption-side: top; text-align: left; padding-bottom: 0.4em; }
th, td { padding: 0.2em 0.6em; border-bottom: 1px solid #eee; text-align: left; vertical-align: top; }
thead th { border-bottom: 2px solid #444; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; height: auto; }
figcaption { font-size: 0.9em; color: #444; } .notes li { margin: 0.3em 0; } code { font-size: 0.9em; }
.scroll { overflow-x: auto; }
"""

_SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (img) { return img.complete && img.naturalWidth > 0; }).length;
  document.body.dataset.imagesLoaded = loaded + "/" + images.length;
});
"""


@dataclass(frozen=True)
class PageFigure:
    title: str
    caption: str
    png: Path  # embedded as a data URI
    files: tuple[str, ...]  # the figure's files, relative to the report folder


def data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def page(*, title: str, command: str, sources: Table, notes: Sequence[str], tables: Sequence[Table],
         figures: Sequence[PageFigure]) -> str:
    esc = html.escape
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{_STYLE}</style><script>{_SCRIPT}</script></head>",
        '<body data-images-loaded="">', f"<h1>{esc(title)}</h1>",
        f"<p>Made by <code>{esc(command)}</code>.</p>",
        '<h2 id="sources">Where the rows came from</h2>', f'<div class="scroll">{to_html(sources)}</div>',
    ]
    if notes:
        parts += ['<h2 id="notes">Notes</h2>', '<ul class="notes">',
                  *(f"<li>{esc(note)}</li>" for note in notes), "</ul>"]
    if figures:
        parts.append('<h2 id="figures">Figures</h2>')
        for fig in figures:
            files = ", ".join(f'<a href="{esc(f)}">{esc(Path(f).name)}</a>' for f in fig.files)
            parts.append(f'<figure><img src="{data_uri(fig.png)}" alt="{esc(fig.title)}">'
                         f"<figcaption><b>{esc(fig.title)}.</b> {esc(fig.caption)} Files: {files}</figcaption>"
                         "</figure>")
    for table in tables:
        parts += [f'<h2 id="{esc(table.name)}">{esc(table.title)}</h2>', f'<div class="scroll">{to_html(table)}</div>']
    parts += ["</body></html>", ""]
    return "\n".join(parts)
