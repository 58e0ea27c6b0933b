"""The low-rank study: every method × d_c × d_r on a real model, per layer and for the whole model.

Legend: B batch (1), T tokens, D hidden.

1. Load the model (``model.load_model``), the two fixed token slices (``text``), and capture each
   layer's attention inputs on the calibration slice and on the held-out start of the eval slice.
2. Source rows: the unconverted model's perplexity through Hugging Face's attention and through
   attnbench's ``from_hf`` layers (an adapter check), its KV bytes, its decode latency.
3. For each (d_r, method, d_c): convert every layer with the calibration activations, measure the
   weight and activation errors per layer, swap all converted layers in, measure perplexity, and
   time one converted layer's decode step. The rows go to one parquet file per combination as soon
   as it finishes; a rerun with the same settings reads finished files instead of recomputing.

Rows follow ``schema.COLUMNS``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from torch import Tensor, nn

from attnbench import variants
from attnbench.harness.measure.case import DTYPES
from attnbench.harness.report.figures import FigureInput, draw_all
from attnbench.harness.studies.lowrank.hooks import capture_attention_inputs, decoder_layers, swapped_attention
from attnbench.harness.studies.lowrank.latency import decode_latency
from attnbench.harness.studies.lowrank.model import load_model
from attnbench.harness.studies.lowrank.perplexity import perplexity
from attnbench.harness.studies.lowrank.schema import row
from attnbench.harness.studies.lowrank.settings import StudySettings
from attnbench.harness.studies.lowrank.text import reference_text, text_label, token_slices
from attnbench.variants.convert import METHODS, available_rank, convert
from attnbench.variants.layer import AttentionLayer
from attnbench.variants.presets import load_preset

# Settings a finished combination's file must match to be reused instead of recomputed.
_REUSE_KEYS = ("model", "rope_pairs", "impl", "dtype", "kv_dtype", "calib_tokens", "eval_tokens", "act_tokens",
               "text")
Rows = list[dict[str, Any]]


def run_study(settings: StudySettings, out_dir: Path) -> pd.DataFrame:
    """Load the preset's real weights and run the study; rows also land in ``out_dir``."""
    shape = load_preset(settings.model)
    model, tokenizer = load_model(shape.weights, dtype=settings.torch_dtype)
    calib_ids_T, eval_ids_T = token_slices(tokenizer, calib_tokens=settings.calib_tokens,
                                           eval_tokens=settings.eval_tokens)
    return study_model(model, settings, out_dir, calib_ids_T=calib_ids_T, eval_ids_T=eval_ids_T,
                       text=text_label(reference_text()))


def main(cfg: Mapping[str, Any], out_dir: Path) -> pd.DataFrame:
    """Hydra entry (``task: lowrank``): ``cfg.model`` is the preset, ``cfg.lowrank`` the settings.

    Writes the rows and the figures (``figures/lowrank_*_<width>.{pdf,png}``, the report's figures
    of a study, drawn through its registry) under ``out_dir``.
    """
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(OmegaConf.create(dict(cfg)), resolve=True)
    model = plain.get("model")
    name = model["name"] if isinstance(model, Mapping) else model
    settings = StudySettings.from_mapping({**(plain.get("lowrank") or {}), **({"model": name} if name else {})})
    df = run_study(settings, Path(out_dir))
    draw_all(FigureInput.of_lowrank(df), Path(out_dir), rows="lowrank")
    return df


def load_results(out_dir: Path) -> pd.DataFrame:
    """Every row a study wrote under ``out_dir``."""
    parts = sorted(Path(out_dir).glob("lowrank-*.parquet"))
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True) if parts else pd.DataFrame()


def study_model(model: nn.Module, settings: StudySettings, out_dir: Path, *, calib_ids_T: Tensor,
                eval_ids_T: Tensor, text: str) -> pd.DataFrame:
    """The study on an already loaded Hugging Face causal LM (Llama-family attention)."""
    for method in settings.methods:
        METHODS.get(method)  # an unknown name fails before any work
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    blocks = decoder_layers(model)
    layers = list(settings.layers) if settings.layers is not None else list(range(len(blocks)))
    bad = [i for i in layers if not 0 <= i < len(blocks)]
    if bad:
        raise ValueError(f"layers={bad} are not decoder layers; allowed: 0..{len(blocks) - 1}")
    sources = {i: variants.from_hf(blocks[i].self_attn) for i in layers}
    calib = capture_attention_inputs(model, calib_ids_T.unsqueeze(0), layers)
    held = capture_attention_inputs(model, eval_ids_T[:settings.act_tokens].unsqueeze(0), layers)
    impl = settings.impl
    reference = {i: (_prefill(src, calib[i], impl), _prefill(src, held[i], impl)) for i, src in sources.items()}
    kv_dtype = DTYPES[settings.kv_dtype]
    first = sources[layers[0]]
    common = dict(model=settings.model, rope_pairs=settings.rope_pairs, impl=impl, dtype=settings.dtype,
                  kv_dtype=settings.kv_dtype, calib_tokens=int(calib_ids_T.numel()),
                  eval_tokens=int(eval_ids_T.numel()), act_tokens=settings.act_tokens, text=text,
                  source_kv_bytes_per_token=first.kv_bytes_per_token(dtype=kv_dtype))

    def ppl() -> float:
        return perplexity(model, eval_ids_T, window=settings.window)

    frames = [_cached(out_dir / "lowrank-source.parquet", common,
                      lambda: _source_rows(model, sources, settings, common, ppl))]
    source_ppl = float(frames[0].loc[frames[0]["scope"] == "model", "source_perplexity"].iloc[0])
    for d_r in settings.d_r:
        for method in settings.methods:
            for d_c in settings.d_c:
                path = out_dir / f"lowrank-{method}-dc{d_c}-dr{d_r}.parquet"
                frames.append(_cached(path, common, lambda: _combination(
                    model, sources, calib, held, reference, settings, common | {"source_perplexity": source_ppl},
                    ppl, method=method, d_c=d_c, d_r=d_r)))
    return pd.concat(frames, ignore_index=True)


def _cached(path: Path, common: dict[str, Any], compute: Callable[[], Rows]) -> pd.DataFrame:
    if path.exists():
        old = pd.read_parquet(path)
        if all(key in old.columns and old[key].iloc[0] == common[key] for key in _REUSE_KEYS):
            return old
    df = pd.DataFrame(compute())
    df.to_parquet(path, index=False)
    return df


def _prefill(layer: AttentionLayer, x_BTD: Tensor, impl: str) -> Tensor:
    return layer.prefill(x_BTD, layer.new_cache(x_BTD.shape[0], x_BTD.shape[1], impl=impl), impl=impl)


def _rel_err(actual: Tensor, expected: Tensor) -> float:
    return float((actual.double() - expected.double()).norm() / expected.double().norm())


def _source_rows(model: nn.Module, sources: dict[int, AttentionLayer], settings: StudySettings,
                 common: dict[str, Any], ppl: Callable[[], float]) -> Rows:
    start = time.perf_counter()
    hf_ppl = ppl()
    with swapped_attention(model, sources, impl=settings.impl):
        ours = ppl()
    first = next(iter(sources.values()))
    base = common | {"method": "source", "rope_heads": first.config.kv_heads, "status": "ok", "reason": ""}
    rows = [row(**base, layer=-1, scope="model", perplexity=ours, source_perplexity=hf_ppl,
                kv_bytes_per_token=common["source_kv_bytes_per_token"], elapsed_s=time.perf_counter() - start)]
    rows += _latency_rows(first, settings.source_latency_impls, settings, base)
    return rows


def _latency_rows(layer: AttentionLayer, impls: tuple[str, ...], settings: StudySettings,
                  base: dict[str, Any]) -> Rows:
    rows = []
    for impl in impls if settings.latency_context else ():
        start = time.perf_counter()
        timing = decode_latency(layer, impl=impl, context=settings.latency_context)
        rows.append(row(**base | {"impl": impl}, layer=-1, scope="latency", context_len=settings.latency_context,
                        **timing, elapsed_s=time.perf_counter() - start))
    return rows


def _combination(model: nn.Module, sources: dict[int, AttentionLayer], calib: dict[int, Tensor],
                 held: dict[int, Tensor], reference: dict[int, tuple[Tensor, Tensor]], settings: StudySettings,
                 common: dict[str, Any], ppl: Callable[[], float], *, method: str, d_c: int, d_r: int) -> Rows:
    start = time.perf_counter()
    first = next(iter(sources.values()))
    base = common | {"method": method, "d_c": d_c, "d_r": d_r, "rope_heads": first.config.kv_heads}
    rank = available_rank(first, d_r) if d_r <= first.config.head_dim else 0
    if not 1 <= d_c <= rank:
        reason = (f"d_r={d_r} exceeds head_dim={first.config.head_dim}" if rank == 0
                  else f"d_c={d_c} is above the rank available at d_r={d_r} ({rank})")
        return [row(**base, layer=-1, scope="model", status="skipped", reason=reason, elapsed_s=0.0)]
    rows, converted = [], {}
    kv_dtype = DTYPES[settings.kv_dtype]
    for i, source in sources.items():
        t0 = time.perf_counter()
        try:
            conversion = convert(source, d_c=d_c, d_r=d_r, method=method, calibration_BTD=calib[i],
                                 rope_pairs=settings.rope_pairs)
        except (ValueError, RuntimeError) as error:  # e.g. a Cholesky failure on degenerate activations
            reason = " ".join(str(error).split())
            return rows + [row(**base, layer=i, scope="layer", status="error", reason=reason),
                           row(**base, layer=-1, scope="model", status="error", reason=f"layer {i}: {reason}",
                               elapsed_s=time.perf_counter() - start)]
        layer = converted[i] = conversion.layer
        calib_out, held_out = reference[i]
        rows.append(row(**base, layer=i, scope="layer", weight_rel_err=conversion.weight_rel_err,
                        kv_act_rel_err=conversion.kv_act_rel_err,
                        calib_act_rel_err=_rel_err(_prefill(layer, calib[i], settings.impl), calib_out),
                        act_rel_err=_rel_err(_prefill(layer, held[i], settings.impl), held_out),
                        kv_bytes_per_token=layer.kv_bytes_per_token(dtype=kv_dtype), status="ok", reason="",
                        elapsed_s=time.perf_counter() - t0))
    with swapped_attention(model, converted, impl=settings.impl):
        model_ppl = ppl()
    layer_df = pd.DataFrame(rows)
    means = {k: float(layer_df[k].mean()) for k in ("weight_rel_err", "kv_act_rel_err", "calib_act_rel_err",
                                                     "act_rel_err")}
    ok = base | {"status": "ok", "reason": ""}
    rows.append(row(**ok, layer=-1, scope="model", perplexity=model_ppl, **means,
                    kv_bytes_per_token=int(layer_df["kv_bytes_per_token"].iloc[0]),
                    elapsed_s=time.perf_counter() - start))
    rows += _latency_rows(next(iter(converted.values())), settings.latency_impls, settings, ok)
    return rows
