"""GQA (and its settings MHA, MQA) and sliding-window layers as transformers' LlamaAttention,
Qwen2Attention, MistralAttention and GptOssAttention.

Legend: B batch, L new queries, S cache rows, K kv heads, H head dim, W window.

transformers keeps keys and values as ``[B, K, S, H]``, attnbench as ``[B, S, K, H]``: the module's
cache is the attnbench cache's buffers, transposed (views; what the module writes lands there).
Which module: biases on q, k, v only is Qwen2's; on all four (or none) Llama's ``attention_bias``;
a window with no sinks is Mistral's (no biases); learned sinks are gpt-oss's (a window layer or a
full one, ``layer_types``); the output gate with zero-centred q/k norms is Qwen3-Next's full layer.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any

import torch

from attnbench.variants.families.gqa import GQA, GQAConfig
from attnbench.variants.families.swa import SWA, ring_rows
from attnbench.variants.hf import _GQA_NAMES, _QWEN3_NEXT_NAMES
from attnbench.variants.hf_peer import HFSpec, Slots, linear_slots, register, weight_names

if TYPE_CHECKING:
    from torch import Tensor

    from attnbench.variants.cache import KVCache
    from attnbench.variants.layer import Step


def kv_views(cache: KVCache) -> tuple[Tensor, Tensor]:
    """The cache's K and V as transformers holds them, ``[B, K, S, H]`` (views)."""
    return cache["k"].transpose(1, 2), cache["v"].transpose(1, 2)


def _self_attention_reason(layer: GQA, module: str) -> str | None:
    if layer.attention != "self":
        return (f"hf runs transformers' decoder attention ({module}), which attends to its own sequence; "
                "this layer is cross-attention")
    assert layer.rope is not None
    if layer.rope.layout != "half":
        return f"{module} rotates half-split pairs (rope_layout=half); this layer's rope_layout is {layer.rope.layout}"
    return None


def _config(c: GQAConfig, **extra: Any) -> dict[str, Any]:
    # The rotary frequencies are the layer's own (set on the rotary module at plan time); the
    # config's only need to be valid ones of the same width.
    return {"hidden_size": c.hidden, "num_attention_heads": c.heads, "num_key_value_heads": c.kv_heads,
            "head_dim": c.head_dim, "num_hidden_layers": 1,
            "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta}, **extra}


def _spec(layer: GQA, family: str, attention: str, config_class: str, config: dict[str, Any],
          **options: Any) -> HFSpec:
    weights = weight_names(_GQA_NAMES, layer)
    if getattr(layer, "sinks", None) is not None:
        weights["sinks"] = "sinks"  # GptOssAttention.sinks: one logit per query head
    return HFSpec(modeling=f"transformers.models.{family}.modeling_{family}", attention=attention,
                  config=config_class, config_kwargs=config, weights=weights, cache=kv_views,
                  attributes={"scaling": layer.scale}, **options)


def _qwen3_next(layer: GQA) -> HFSpec | str:
    c = layer.config
    if not (c.output_gate and c.qk_norm == "zero_centered") or c.qkv_bias != c.o_bias:
        return (f"Qwen3NextAttention has the output gate, zero-centred q/k norms and biases on all four projections "
                f"or none; this layer has output_gate={c.output_gate}, qk_norm={c.qk_norm!r}, "
                f"qkv_bias={c.qkv_bias}, o_bias={c.o_bias}")
    reason = _self_attention_reason(layer, "Qwen3NextAttention")
    if reason is not None:
        return reason
    rope = {"rope_type": "default", "rope_theta": c.rope_theta, "partial_rotary_factor": c.partial_rotary_factor}
    config = {**_config(c, attention_bias=c.qkv_bias, rms_norm_eps=c.norm_eps), "rope_parameters": rope}
    spec = _spec(layer, "qwen3_next", "Qwen3NextAttention", "Qwen3NextConfig", config)
    return dataclasses.replace(spec, weights=weight_names(_QWEN3_NEXT_NAMES, layer))


def _dense(layer: GQA) -> HFSpec | str:
    c = layer.config
    if c.output_gate or c.qk_norm != "none" or c.rotary_dim != c.head_dim:
        return _qwen3_next(layer)
    if c.qkv_bias and not c.o_bias:
        family, module, config = "qwen2", "Qwen2", _config(c)
    elif c.qkv_bias == c.o_bias:
        family, module, config = "llama", "Llama", _config(c, attention_bias=c.qkv_bias)
    else:
        return ("transformers has no attention module with an output bias but no q/k/v biases "
                "(Llama's attention_bias puts one on all four, Qwen2 on q, k, v only)")
    return _self_attention_reason(layer, f"{module}Attention") or \
        _spec(layer, family, f"{module}Attention", f"{module}Config", config)


@register(GQA)
def gqa(layer: GQA) -> HFSpec | str:
    return _dense(layer)


def ring_slots(step: Step, *, sinks: int) -> Slots:
    """Where a window layer's step writes in its ring of S rows (``SWA._ring_step``'s rows): position
    p < sinks in row p, later ones in ``sinks + (p - sinks) mod (S - sinks)``."""
    rows = step.cache["k"].shape[1]
    L, start = step.x_BLD.shape[1], step.kv_start
    assert isinstance(start, int), "a sliding-window cache is not ragged"
    if start + L <= rows:  # the ring has not wrapped: a linear cache
        return linear_slots(step)
    # The entries still in the ring after the step: sink positions, then the last rows - sinks (host
    # arithmetic, no data-dependent indexing, so the harness's fake-tensor dry run can run it).
    device = step.x_BLD.device
    kept_L = torch.cat([torch.arange(0, max(0, min(L, sinks - start)), device=device),
                        torch.arange(max(0, L - (rows - sinks)), L, device=device)])
    rows_P = ring_rows(start + kept_L, sinks=sinks, rows=rows)
    if L == 1:
        return Slots(rows_P)
    return Slots(rows_P, kept_L, "cache_then_new" if start else "new")


@register(SWA)
def swa(layer: SWA) -> HFSpec | str:
    c = layer.config
    if c.sink_tokens:
        return f"transformers has no attention module keeping StreamingLLM sink tokens (sink_tokens={c.sink_tokens})"
    slots = functools.partial(ring_slots, sinks=c.sink_tokens) if c.window is not None else linear_slots
    if layer.sinks is not None:
        reason = _self_attention_reason(layer, "GptOssAttention")
        if reason is None and c.qkv_bias != c.o_bias:
            reason = (f"GptOssAttention has biases on all four projections or none (attention_bias); this layer "
                      f"has qkv_bias={c.qkv_bias}, o_bias={c.o_bias}")
        if reason is not None:
            return reason
        layer_type = "full_attention" if c.window is None else "sliding_attention"
        config = _config(c, attention_bias=c.qkv_bias, layer_types=[layer_type],
                         **({} if c.window is None else {"sliding_window": c.window}))
        return _spec(layer, "gpt_oss", "GptOssAttention", "GptOssConfig", config, slots=slots, window=c.window)
    if c.window is None:
        return _dense(layer)
    if c.qkv_bias or c.o_bias:
        return (f"MistralAttention, transformers' window without sinks, has no biases; this layer has "
                f"qkv_bias={c.qkv_bias}, o_bias={c.o_bias}")
    reason = _self_attention_reason(layer, "MistralAttention")
    if reason is not None:
        return reason
    config = _config(c, sliding_window=c.window)
    return _spec(layer, "mistral", "MistralAttention", "MistralConfig", config, slots=slots, window=c.window)
