"""``python -m attnbench.harness.report`` on real harness results (tests/fixtures/report_sweep, made on CPU by
tests/fixtures/make_report_sweep.sh): every file exists and holds what it should, the numbers are
the fixture's, the figures are print-ready, and the HTML page renders in a real headless browser."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from attnbench.harness import results
from attnbench.harness.errors import UserError
from attnbench.harness.report import build_report
from attnbench.harness.report.__main__ import main
from attnbench.harness.text.units import significant

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "report_sweep"
TABLES = ("cases", "not_measured", "capacity", "throughput_budget", "sources")
DRAWN = ("latency", "kv_cache", "peak_memory", "roofline", "bandwidth_fraction", "decode_throughput",
         "throughput_budget", "latency_distribution")
WIDTH_PX = {"single": 1050, "double": 2100}  # 300 dpi x 3.5 in, 7 in


@pytest.fixture(scope="module")
def fixture_rows() -> pd.DataFrame:
    return results.load(FIXTURE)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    # CPU rows have no memory budget unless one is given: one in reach of the fixture's batches.
    return build_report(FIXTURE, tmp_path_factory.mktemp("report"), budget_bytes=2 * 2**20, command="pytest")


def test_fixture_is_what_the_report_tests_need(fixture_rows):
    ok = fixture_rows[fixture_rows["status"] == "ok"]
    assert set(ok["variant"]) == {"mha", "mqa", "gqa", "mla"}
    assert ok[ok["phase"] == "decode"].groupby("batch")["seq"].nunique().max() >= 3
    assert (fixture_rows["status"] != "ok").any()
    assert ok["nvml_energy_per_token_j"].isna().all()  # CPU: no NVML


def test_every_table_and_figure_file_exists(report):
    out = report.out
    for name in TABLES:
        for ext in ("md", "tex", "csv"):
            assert (out / "tables" / f"{name}.{ext}").stat().st_size > 0, f"{name}.{ext}"
    for name in DRAWN:
        for width in WIDTH_PX:
            for ext in ("pdf", "png"):
                assert (out / "figures" / f"{name}_{width}.{ext}").stat().st_size > 0, f"{name}_{width}.{ext}"
    assert set(report.figures) == set(DRAWN)
    lines = (out / "manifest.txt").read_text().splitlines()
    assert lines[0].startswith("# attnbench report manifest")
    listed = {line.split("  ", 1)[1] for line in lines[1:]} | {"manifest.txt"}
    assert listed == {str(p.relative_to(out)) for p in report.files}
    assert {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} == listed


def test_energy_figure_is_left_out_with_a_note_not_drawn_empty(report):
    assert not list(report.out.glob("figures/energy_per_token*"))
    assert "NVML" in report.left_out["energy_per_token"]
    for page in ("report.md", "report.html"):
        assert "Energy per token against context length: left out" in (report.out / page).read_text()


def test_cases_csv_holds_the_fixture_numbers(report, fixture_rows):
    table = pd.read_csv(report.out / "tables" / "cases.csv").set_index("case_id")
    ok = fixture_rows[fixture_rows["status"] == "ok"].set_index("case_id")
    assert sorted(table.index) == sorted(ok.index)
    for column in ("latency_ms", "latency_ci_low_ms", "latency_ci_high_ms", "gbps", "frac_peak_bandwidth", "tflops",
                   "peak_mem_bytes", "kv_cache_bytes"):
        np.testing.assert_allclose(table.loc[ok.index, column], ok[column].astype(float), rtol=1e-12,
                                   err_msg=column)
    assert (table["env_device_name"] == ok["env_device_name"].iloc[0]).all()


def test_speedup_and_memory_ratio_are_against_mha_eager_at_the_same_setting(report, fixture_rows):
    table = pd.read_csv(report.out / "tables" / "cases.csv").set_index("case_id")
    ok = fixture_rows[fixture_rows["status"] == "ok"]
    checked = 0
    for case_id, row in ok.set_index("case_id").iterrows():
        base = ok[(ok["variant"] == "mha") & (ok["impl"] == "eager") & (ok["seq"] == row["seq"])
                  & (ok["batch"] == row["batch"]) & (ok["phase"] == row["phase"])]
        assert len(base) == 1, (row["variant"], row["impl"], row["seq"], row["batch"], row["phase"])
        expected = base["latency_ms"].iloc[0] / row["latency_ms"]
        assert math.isclose(table.loc[case_id, "speedup"], expected, rel_tol=1e-12)
        ratio = row["peak_mem_bytes"] / base["peak_mem_bytes"].iloc[0]
        assert math.isclose(table.loc[case_id, "mem_ratio"], ratio, rel_tol=1e-12)
        checked += 1
    assert checked == len(ok)


def test_not_measured_table_lists_every_other_status_with_its_reason(report, fixture_rows):
    table = pd.read_csv(report.out / "tables" / "not_measured.csv")
    failed = fixture_rows[fixture_rows["status"] != "ok"]
    assert sorted(table["case_id"]) == sorted(failed["case_id"])
    assert list(table["reason"]) == list(failed["reason"])
    assert "absorbed applies to mla only" in (report.out / "tables" / "not_measured.md").read_text()


def test_markdown_and_latex_tables(report, fixture_rows):
    md = (report.out / "tables" / "cases.md").read_text().splitlines()
    grid = [line for line in md if line.startswith("|")]
    assert len(grid) == 2 + (fixture_rows["status"] == "ok").sum()  # header, rule, one line per case
    assert "latency (ms)" in grid[0] and "95% CI (ms)" in grid[0] and "speed-up (×)" in grid[0]
    tex = (report.out / "tables" / "cases.tex").read_text()
    for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}", r"\begin{table*}", "S[table-format="):
        assert rule in tex
    assert r"absorbed\_sdpa" in tex and "absorbed_sdpa" not in tex.replace(r"absorbed\_sdpa", "")
    assert r"95\%" in tex and r"$\times$" in tex
    first = fixture_rows[(fixture_rows["variant"] == "mha") & (fixture_rows["impl"] == "eager")
                         & (fixture_rows["seq"] == 64) & (fixture_rows["batch"] == 1)
                         & (fixture_rows["phase"] == "decode")].iloc[0]
    median = significant(first["latency_ms"])  # the median, beside its CI at the same decimals
    low = f"{first['latency_ci_low_ms']:.{len(median.partition('.')[2])}f}"
    assert f"& {median} & [{low}, " in tex


def test_every_cell_of_a_column_has_three_significant_digits(report):
    md = (report.out / "tables" / "cases.md").read_text().splitlines()
    grid = [line.strip("|").split(" | ") for line in md if line.startswith("|")]
    header, cells = [c.strip() for c in grid[0]], [[c.strip() for c in row] for row in grid[2:]]
    for name in ("latency (ms)", "GB/s", "speed-up (×)", "mem ratio (×)"):
        column = [row[header.index(name)] for row in cells if row[header.index(name)]]
        digits = {len(c.replace(",", "").replace(".", "").lstrip("0")) for c in column if float(c.replace(",", "")) < 1000}
        assert digits == {3}, (name, sorted(set(column))[:10])


def test_columns_empty_in_every_row_are_dropped(report):
    sources = (report.out / "tables" / "sources.md").read_text()
    assert "| CUDA |" not in sources and "| driver |" not in sources  # a CPU: no CUDA, no driver
    assert "CUDA" in pd.read_csv(report.out / "tables" / "sources.csv").columns  # the CSV keeps them


@pytest.mark.parametrize("width", WIDTH_PX)
def test_png_figures_are_300_dpi_at_column_width_and_not_blank(report, width):
    for name in DRAWN:
        path = report.out / "figures" / f"{name}_{width}.png"
        with Image.open(path) as image:
            assert image.width == WIDTH_PX[width], name
            assert all(abs(d - 300) < 0.5 for d in image.info["dpi"]), name
        pixels = matplotlib.image.imread(path)[..., :3]
        assert pixels.std() > 0.05, f"{name} looks blank"
        assert (pixels.mean(axis=2) < 0.5).mean() > 0.005, f"{name} has almost no ink"


def test_pdf_figures_embed_truetype_fonts(report):
    for path in report.out.glob("figures/*.pdf"):
        data = path.read_bytes()
        assert data.startswith(b"%PDF")
        assert b"/FontFile2" in data or b"/TrueType" in data, path.name
        assert b"/Type3" not in data, path.name


def test_html_page_is_self_contained(report):
    page = (report.out / "report.html").read_text()
    assert page.count('src="data:image/svg+xml;base64,') == len(DRAWN)  # SVG on the page, PNG for the markdown
    assert not re.search(r'src="(?!data:)', page)  # nothing fetched from elsewhere
    assert not re.search(r'<link\b', page)
    for name in ("Measured cases", "Cases not measured", "Capacity", "Where the rows came from"):
        assert name in page
    assert "AMD EPYC" in page or report.devices[0] in page
    assert "report_decode" in page and "2.13" in page  # runs and torch version in the header


def test_html_page_has_contents_then_figures_then_notes_then_sortable_tables(report):
    page = (report.out / "report.html").read_text()
    contents = page[page.index('<nav id="contents">'):page.index("</nav>")]
    anchors = re.findall(r'href="#([^"]+)"', contents)
    assert anchors == [*(f"figure-{n}" for n in DRAWN), "notes", *(f"table-{n}" for n in TABLES)]
    for anchor in anchors:
        assert f'id="{anchor}"' in page, anchor
    assert page.index('id="figure-latency"') < page.index('id="notes"') < page.index('id="table-cases"')
    assert page.count('class="sortable"') == len(TABLES) and "function sortBy" in page
    assert "white-space: nowrap" in page
    assert "What the longest context assumes" in page  # stated under the capacity table
    md = (report.out / "report.md").read_text()
    assert md.index("## Figures") < md.index("## Notes") < md.index("## Measured cases")
    assert md.count("](figures/") == len(DRAWN) and ".png)" in md


# At 1280 px: the page's width, then each table wider than its box whose box does not scroll, each box
# past the page's right edge, each scrolling table whose first column is not fixed, each header cut.
_LAYOUT = """
var out = [document.documentElement.scrollWidth];
document.querySelectorAll("table").forEach(function (t, i) {
  var box = t.parentElement, style = getComputedStyle(box);
  if (t.scrollWidth > box.clientWidth + 1 && style.overflowX !== "auto") out.push("unboxed table " + i);
  if (box.getBoundingClientRect().right > document.documentElement.clientWidth + 1) out.push("box past page " + i);
  var first = t.querySelector("tbody td");
  if (t.scrollWidth > box.clientWidth + 1 && first && getComputedStyle(first).position !== "sticky")
    out.push("first column scrolls away " + i);
  t.querySelectorAll("th").forEach(function (th) {
    if (th.scrollWidth > th.clientWidth + 1) out.push("header cut " + th.textContent);
  });
});
document.body.dataset.layout = out.join(";") + ";";
"""


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="no chromium binary on PATH (Debian: apt-get install chromium)")
def test_html_page_renders_in_headless_chromium_with_every_image_loaded(report, tmp_path):
    flags = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000"]
    url = (report.out / "report.html").as_uri()
    # The same page with a script that measures its layout at 1280 px, in the same (one) DOM dump.
    measured = tmp_path / "measured.html"
    page = (report.out / "report.html").read_text()
    measured.write_text(page.replace("</body>", f"<script>{_LAYOUT}</script></body>"))
    dom = subprocess.run([*flags, "--window-size=1280,1600", "--dump-dom", measured.as_uri()], capture_output=True,
                         text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    loaded = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom.stdout)
    assert loaded, "the page's load script did not run"
    assert loaded.group(1) == loaded.group(2) == str(len(DRAWN))
    layout = re.search(r'data-layout="([^"]*)"', dom.stdout)
    assert layout, "the layout script did not run"
    page_px, *problems = layout.group(1).split(";")
    assert int(page_px) <= 1280, page_px  # nothing widens the page: a wide table scrolls in its box
    assert problems == [""], problems
    shot = tmp_path / "page.png"
    subprocess.run([*flags, "--window-size=1200,1600", f"--screenshot={shot}", url], capture_output=True,
                   timeout=120, check=True)
    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.std() > 0.05  # text and figures, not a blank page


@pytest.mark.skipif(_chromium() is None, reason="no chromium binary on PATH (Debian: apt-get install chromium)")
def test_a_click_on_a_header_sorts_numbers_as_numbers_and_blanks_last(tmp_path):
    from attnbench.harness.report.page.html import SORT_SCRIPT

    rows = "".join(f"<tr><td>{a}</td><td>{b}</td></tr>" for a, b in
                   (("x", "1,024"), ("y", ""), ("z", "64"), ("w", "4k"), ("v", "0.5 [0.4, 0.6]")))
    page = tmp_path / "sort.html"
    page.write_text(f'<!DOCTYPE html><html><head><script>{SORT_SCRIPT}</script></head><body>'
                    f'<table class="sortable"><thead><tr><th>name</th><th id="n">n</th></tr></thead>'
                    f"<tbody>{rows}</tbody></table><script>"
                    'document.getElementById("n").click();'
                    'document.body.dataset.order = Array.prototype.map.call(document.querySelectorAll("tbody tr"), '
                    'function (r) { return r.cells[0].textContent; }).join("");</script></body></html>')
    flags = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-order="vzxwy"' in dom.stdout  # 0.5 < 64 < 1,024 < 4k (4096); the blank last


def test_command_writes_a_report_with_filters_budget_and_batches(tmp_path, capsys):
    out = tmp_path / "rep"
    code = main([str(FIXTURE), "--out", str(out), "--filter", "variant=mha,mla", "--filter", "phase=decode",
                 "--filter", "impl=eager,absorbed", "--budget", "80GiB", "--batches", "1,8", "--widths", "single",
                 "--against", str(FIXTURE)])
    assert code == 0
    assert "report.html" in capsys.readouterr().out
    assert "| 1.00 |" in (out / "against" / "against.md").read_text()  # the rows against themselves
    cases = pd.read_csv(out / "tables" / "cases.csv")
    assert set(cases["variant"]) == {"mha", "mla"} and set(cases["phase"]) == {"decode"}
    assert set(cases["impl"]) == {"eager", "absorbed"}
    capacity = pd.read_csv(out / "tables" / "capacity.csv")
    assert set(capacity["batch"]) == {1, 8} and set(capacity["budget_bytes"]) == {80 * 2**30}
    assert not list(out.glob("figures/*_double.*"))
    assert "--budget 80GiB" in (out / "report.html").read_text()


def test_rebuilding_into_a_folder_removes_only_the_previous_report(tmp_path):
    out = tmp_path / "rep"
    build_report(FIXTURE, out, widths=("single",), figures=("kv_cache", "roofline"))
    build_report(FIXTURE, out, widths=("single",), figures=("kv_cache",))
    assert (out / "figures" / "kv_cache_single.png").exists()
    assert not (out / "figures" / "roofline_single.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"], "no temporary or old folder left beside it"
    (out / "mine.txt").write_text("not the report's")
    with pytest.raises(UserError, match=r"holds .*mine\.txt, which no attnbench report wrote"):
        build_report(FIXTURE, out, widths=("single",), figures=("roofline",))
    assert (out / "mine.txt").read_text() == "not the report's"
    assert (out / "figures" / "kv_cache_single.png").exists(), "the previous report is left whole"


@pytest.mark.parametrize("args, fragment", [
    (["no/such/results"], "no results at"),
    ([str(FIXTURE), "--budget", "80XB"], "--budget='80XB' is not a size"),
    ([str(FIXTURE), "--filter", "varaint=mha"], "filter key 'varaint' is not a results column"),
    ([str(FIXTURE), "--filter", "variant=nope"], "no rows left after the filter variant=nope"),
    ([str(FIXTURE), "--baseline", "model=tiny"], "baseline part 'model=tiny' is not one of"),
    ([str(FIXTURE), "--batches", "1,x"], "--batches '1,x' is not a list of positive integers"),
    ([str(FIXTURE), "--widths", "triple"], "width='triple' is not one of: single, double"),
    ([str(FIXTURE), "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
])
def test_bad_input_is_one_line_and_exit_2(args, fragment, capsys, tmp_path):
    try:
        code = main([*args, "--out", str(tmp_path / "r")])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and fragment in err, err


def test_the_real_command_fails_in_one_line_without_a_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "attnbench.harness.report", str(tmp_path / "nothing"), "--out",
                           str(tmp_path / "r")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("error: no results at") and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr
