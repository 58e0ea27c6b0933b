"""Identity that survives machines: two machines' same-named sweeps, loaded, reported and merged
together, keep every row (issue 12, item 1)."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from attnbench.harness import results
from attnbench.harness.errors import UserError
from attnbench.harness.report.analysis.baseline import Baseline
from attnbench.harness.report.data import load_rows, prepare
from attnbench.harness.report.page.build import build_report
from attnbench.harness.results import merge

FIXTURE = Path(__file__).parent / "fixtures" / "report_sweep" / "rows" / "rows.parquet"


def _as_host(folder: Path, host: str) -> Path:
    """A copy of the fixture's rows (one sweep, same run_root names) as if measured on ``host``: MHA's
    and MLA's eager and absorbed rows, which keep the report's baseline and a few panels (time)."""
    table = pq.read_table(FIXTURE, filters=[("variant", "in", ["mha", "mla"]), ("impl", "in", ["eager", "absorbed"])])
    table = table.set_column(table.schema.get_field_index("env_host"), "env_host",
                             pa.array([host] * len(table), pa.string()))
    (folder / "rows").mkdir(parents=True)
    pq.write_table(table, folder / "rows" / "rows.parquet")
    return folder


def test_two_hosts_same_name_keep_every_row_in_load_report_and_merge(tmp_path):
    one = len(results.load(_as_host(tmp_path / "one", "node-0")))
    a, b = _as_host(tmp_path / "a", "node-a"), _as_host(tmp_path / "b", "node-b")
    both = results.load([a, b])
    assert len(both) == 2 * one
    assert both.groupby("env_host").size().to_dict() == {"node-a": one, "node-b": one}

    data = prepare(load_rows([a, b]))
    assert len(data.all_rows) == 2 * one
    assert sorted(data.devices()) == ["AMD EPYC @ node-a", "AMD EPYC @ node-b"]
    assert any("2 hosts (node-a, node-b)" in note and "no host's rows are merged" in note for note in data.notes)

    report = build_report([a, b], tmp_path / "report", baseline=Baseline.parse("variant=mha,impl=eager"),
                          widths=["single"], command="test")
    assert sorted(report.devices) == ["AMD EPYC @ node-a", "AMD EPYC @ node-b"]
    html = (tmp_path / "report" / "report.html").read_text()
    assert "no host&#x27;s rows are merged" in html or "no host's rows are merged" in html

    merged = merge.merge([a, b])
    assert len(merged.frame) == 2 * one
    assert set(merged.frame["env_host"]) == {"node-a", "node-b"}


def test_one_host_twice_is_still_a_duplicate_for_merge(tmp_path):
    a, b = _as_host(tmp_path / "a", "node-a"), _as_host(tmp_path / "b", "node-a")
    with pytest.raises(UserError, match="^duplicate case"):
        merge.merge([a, b])


def test_one_device_on_one_host_is_unchanged(tmp_path):
    data = prepare(load_rows(_as_host(tmp_path / "a", "node-a")))
    assert data.devices() == ["AMD EPYC"] and not any("hosts" in n for n in data.notes)


def test_run_job_twice_on_two_hosts_keeps_both(tmp_path, monkeypatch):
    """Two real tiny sweeps under one name, the host name patched between them."""
    from hydra import compose, initialize_config_dir

    from attnbench.harness.sweep.job import run_job
    from attnbench.variants.presets import conf_root

    with initialize_config_dir(config_dir=str(conf_root()), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=smoke", "measure.calibrate=false", "device=cpu",
                                           "variant=gqa", "impl=sdpa", "phase=decode", "name=same"])
    roots = []
    for host in ("host-1", "host-2"):
        monkeypatch.setattr("socket.gethostname", lambda host=host: host)
        root = tmp_path / host / "same"
        run_job(cfg, job_dir=root, root=root, log=io.StringIO())
        roots.append(root)
    per_host = len(results.load(roots[0]))
    both = results.load(roots)
    assert per_host >= 1 and len(both) == 2 * per_host
    assert set(both["run_root"]) == {"same"} and set(both["env_host"]) == {"host-1", "host-2"}
    assert len(prepare(load_rows(roots)).all_rows) == 2 * per_host
