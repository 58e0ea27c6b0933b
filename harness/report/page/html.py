"""The report as one self-contained HTML page: a table of contents, the figures (SVG, embedded as
data URIs), the notes, then the tables; no script, style or image from anywhere else, so it opens
from a file in any browser with no server.

Two small inline scripts: one sorts a table by the column whose header is clicked (numbers as
numbers, ``4k`` as 4096, blanks last; a second click reverses), the other counts, once the page has
loaded, the images that decoded (``complete && naturalWidth > 0``) and writes ``N/M`` into
``<body data-images-loaded>``: a headless browser's DOM dump then tells whether every figure rendered.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

from attnbench.harness.report.figures import PageFigure
from attnbench.harness.report.tables.formats import to_html
from attnbench.harness.report.tables.views import Table

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
nav ul { list-style: none; padding-left: 0; } nav ol { columns: 2; margin: 0.2em 0 0.5em; }
nav li { margin: 0.1em 0; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 0.3em; }
p.caption { font-size: 0.9em; max-width: 60em; margin: 0.5em 0 0.3em; }
th, td { padding: 0.2em 0.6em; border-bottom: 1px solid #eee; text-align: left; vertical-align: top;
         white-space: nowrap; }
td.long { white-space: normal; min-width: 24em; }
thead th { border-bottom: 2px solid #444; cursor: pointer; user-select: none; }
thead th[aria-sort="ascending"]::after { content: " \\25B2"; font-size: 0.7em; }
thead th[aria-sort="descending"]::after { content: " \\25BC"; font-size: 0.7em; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
p.below { font-size: 0.85em; color: #444; max-width: 60em; margin: 0 0 1.5em; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; height: auto; }
figcaption { font-size: 0.9em; color: #444; } .notes li { margin: 0.3em 0; } code { font-size: 0.9em; }
/* A table wider than the page scrolls inside its own box, its first column (the case's name) kept in
   view; headers wrap between words rather than widen the table or get cut. */
.scroll { overflow-x: auto; max-width: 100%; }
.scroll thead th { white-space: normal; vertical-align: bottom; min-width: 3.5em; }
.scroll th:first-child, .scroll td:first-child { position: sticky; left: 0; z-index: 1; background: #fff;
                                                 box-shadow: 1px 0 0 #ddd; }
"""

SORT_SCRIPT = """
function sortKey(text) {
  var t = text.trim().replace(/[,\\s\\[]/g, "");
  var m = t.match(/^(-?\\d*\\.?\\d+(?:e[-+]?\\d+)?)([kM]?)/);
  if (!m) return null;
  return parseFloat(m[1]) * (m[2] === "k" ? 1024 : m[2] === "M" ? 1048576 : 1);
}
function sortBy(th) {
  var table = th.closest("table"), body = table.tBodies[0];
  var column = Array.prototype.indexOf.call(th.parentNode.children, th);
  var rows = Array.prototype.slice.call(body.rows);
  var texts = rows.map(function (r) { return r.cells[column] ? r.cells[column].textContent : ""; });
  var numeric = texts.every(function (t) { return !t.trim() || sortKey(t) !== null; });
  var up = th.getAttribute("aria-sort") !== "ascending";
  Array.prototype.forEach.call(th.parentNode.children, function (h) { h.removeAttribute("aria-sort"); });
  th.setAttribute("aria-sort", up ? "ascending" : "descending");
  var order = rows.map(function (r, i) { return i; }).sort(function (a, b) {
    var x = texts[a].trim(), y = texts[b].trim();
    if (!x || !y) return (!x) - (!y) || a - b;  // blanks last, either way
    var c = numeric ? sortKey(x) - sortKey(y) : x.localeCompare(y);
    return (up ? c : -c) || a - b;  // stable
  });
  order.forEach(function (i) { body.appendChild(rows[i]); });
}
document.addEventListener("click", function (event) {
  var th = event.target.closest("table.sortable thead th");
  if (th) sortBy(th);
});
"""

_LOADED_SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (img) { return img.complete && img.naturalWidth > 0; }).length;
  document.body.dataset.imagesLoaded = loaded + "/" + images.length;
});
"""


def data_uri(svg: bytes) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(svg).decode("ascii")


def page(*, title: str, command: str, sources: Table, notes: Sequence[str], tables: Sequence[Table],
         figures: Sequence[PageFigure]) -> str:
    esc = html.escape

    def entries(items: Sequence[tuple[str, str]]) -> str:
        return "".join(f'<li><a href="#{esc(anchor)}">{esc(text)}</a></li>' for anchor, text in items)

    contents = [f"<li>Figures<ol>{entries([(f'figure-{fig.name}', fig.title) for fig in figures])}</ol></li>"
                if figures else "", '<li><a href="#notes">Notes</a></li>' if notes else "",
                f"<li>Tables<ol>{entries([(f'table-{t.name}', t.title) for t in (*tables, sources)])}</ol></li>"]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{_STYLE}</style>",
        f"<script>{SORT_SCRIPT}{_LOADED_SCRIPT}</script></head>",
        '<body data-images-loaded="">', f"<h1>{esc(title)}</h1>",
        f"<p>Made by <code>{esc(command)}</code>. Click a table's header to sort it.</p>",
        '<nav id="contents"><b>Contents</b><ul>', *contents, "</ul></nav>",
    ]
    for fig in figures:
        files = ", ".join(f'<a href="{esc(f)}">{esc(Path(f).name)}</a>' for f in fig.files)
        parts += [f'<h2 id="figure-{esc(fig.name)}">{esc(fig.title)}</h2>',
                  f'<figure><img src="{data_uri(fig.svg)}" alt="{esc(fig.title)}">'
                  f"<figcaption><b>{esc(fig.title)}.</b> {esc(fig.caption)} Files: {files}</figcaption></figure>"]
    if notes:
        parts += ['<h2 id="notes">Notes</h2>', '<ul class="notes">',
                  *(f"<li>{esc(note)}</li>" for note in notes), "</ul>"]
    for table in (*tables, sources):
        parts += [f'<h2 id="table-{esc(table.name)}">{esc(table.title)}</h2>', to_html(table)]
    parts += ["</body></html>", ""]
    return "\n".join(parts)
