"""The study's tidy rows: one column per quantity, its unit in the name, every row every column.

Scopes: ``layer`` (one converted layer: errors and cache size), ``model`` (every listed layer
converted: perplexity, and the mean of the layer errors), ``latency`` (one layer's decode step).
The source model appears as ``method="source"`` rows (``d_c``/``d_r`` null): its perplexity with
Hugging Face's attention is ``source_perplexity``, with the unconverted layers running through
attnbench (``attnbench.variants.from_hf``) ``perplexity``; the two agree when the adapter is right.
"""

from __future__ import annotations

from typing import Any

COLUMNS: dict[str, str] = {
    "model": "model preset name",
    "method": "low-rank method (variants.convert), or 'source' for the unconverted model",
    "d_c": "latent size of the converted MLA",
    "d_r": "rotary dims per head",
    "rope_heads": "rotary keys cached per token (= the source's kv heads)",
    "rope_pairs": "frequency-pair strategy (variants.convert.partial_rope)",
    "layer": "decoder layer index; -1 for whole-model rows",
    "scope": "layer | model | latency",
    "impl": "attnbench implementation the outputs or timings ran on",
    "weight_rel_err": "‖W − up·down‖_F / ‖W‖_F of the stacked [W_k_nope; W_v]",
    "kv_act_rel_err": "the same error on the projected keys/values of the calibration tokens",
    "calib_act_rel_err": "relative error of the attention output on the calibration tokens",
    "act_rel_err": "relative error of the attention output on held-out tokens (model rows: mean over layers)",
    "kv_bytes_per_token": "KV cache bytes per token per layer in kv_dtype",
    "source_kv_bytes_per_token": "the source GQA layer's KV cache bytes per token per layer in kv_dtype",
    "kv_dtype": "dtype the cache bytes are counted in",
    "perplexity": "whole-model perplexity on the evaluation text",
    "source_perplexity": "the unconverted model's perplexity (Hugging Face attention)",
    "context_len": "cached tokens before the timed decode step",
    "latency_ms": "median decode-step latency of one layer (harness.measure.timer rules)",
    "latency_ci_rel": "half-width of the 95% CI of that median, relative to it",
    "dtype": "dtype the model and the layers compute in",
    "calib_tokens": "calibration tokens (pair selection, whitening, calib_act_rel_err)",
    "eval_tokens": "perplexity tokens",
    "act_tokens": "held-out tokens for act_rel_err",
    "text": "provenance of the fixed text (harness.studies.lowrank.text)",
    "status": "ok | skipped | error",
    "reason": "why a row is skipped or failed; empty when ok",
    "elapsed_s": "wall-clock seconds to produce the row's result",
}


def row(**values: Any) -> dict[str, Any]:
    """A row with every column (unset ones None); an unknown column name is a bug, not data."""
    unknown = sorted(set(values) - set(COLUMNS))
    assert not unknown, f"columns {unknown} are not in the schema"
    return {name: values.get(name) for name in COLUMNS}
