"""``from_hf``: an attnbench layer holding a ``transformers`` attention module's weights.

A weight mapping by module name, no copied model code. RoPE comes from the model family's own
rotary class (so YaRN or Llama-3 frequency scaling is whatever ``transformers`` computes for that
config), and the softmax scale from the module's ``scaling``.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn

from variants.families.dsa import DSA, DSAConfig
from variants.families.gqa import GQA, GQAConfig
from variants.families.mla import MLA, MLAConfig
from variants.families.swa import SWA, SWAConfig
from variants.layer import AttentionLayer
from variants.rope import Rope

_MLA = ("DeepseekV2Attention", "DeepseekV3Attention")
_DSA = ("DeepseekV32Attention",)
_GQA = ("LlamaAttention", "MistralAttention", "Qwen2Attention", "GptOssAttention")

# Hugging Face module name -> attnbench module name.
_MLA_NAMES = {"q_proj": "q_proj", "q_a_proj": "q_a_proj", "q_a_layernorm": "q_a_norm", "q_b_proj": "q_b_proj",
              "kv_a_proj_with_mqa": "kv_a_proj", "kv_a_layernorm": "kv_a_norm", "kv_b_proj": "kv_b_proj",
              "o_proj": "o_proj"}
# DeepSeek-V3.2's indexer keeps transformers' names (wq_b, wk, k_norm, weights_proj) under ``indexer``.
_DSA_NAMES = {**_MLA_NAMES, "indexer": "indexer"}
_GQA_NAMES = {name: name for name in ("q_proj", "k_proj", "v_proj", "o_proj")}


def _family_rope(module: nn.Module, rotary_dim: int, layout: str) -> Rope:
    """The rotary frequencies and attention factor that the model family's rotary class computes."""
    family = sys.modules[type(module).__module__]
    rotary_classes = [obj for name, obj in vars(family).items()
                      if name.endswith("RotaryEmbedding") and isinstance(obj, type)]
    assert len(rotary_classes) == 1, f"expected one rotary class in {family.__name__}"
    rotary = rotary_classes[0](module.config)
    inv_freq = rotary.inv_freq.detach().float().cpu()
    if inv_freq.numel() != rotary_dim // 2:
        raise ValueError(f"{type(module).__name__}: rotary class gives {inv_freq.numel()} frequencies, "
                         f"expected {rotary_dim // 2} (partial rotary factors are not supported)")
    return Rope(rotary_dim, layout=layout, inv_freq=inv_freq, scaling=float(rotary.attention_scaling))


def from_hf(module: nn.Module) -> AttentionLayer:
    """Convert a DeepseekV2/V3/V3.2, Llama, Mistral, Qwen2 or GptOss attention module (same dtype and device).

    A windowed Mistral module (``config.sliding_window``) and every GptOss module become ``swa``
    layers: gpt-oss's window layers (``layer_types[layer_idx] == "sliding_attention"``) keep its
    window, its full layers have none, and all keep its learned sinks. A DeepseekV32 module becomes
    a ``dsa`` layer: its MLA rotates interleaved pairs, its indexer half-split ones at the same
    frequencies.
    """
    kind = type(module).__name__
    if kind not in _MLA + _DSA + _GQA:
        raise ValueError(f"cannot convert {kind}; supported: {', '.join(_MLA + _DSA + _GQA)}")
    config: Any = module.config
    weight = next(module.parameters())
    if kind in _MLA + _DSA:
        # DeepSeek-V2's port rotates interleaved pairs through complex numbers; V3 has a flag; V3.2
        # always calls apply_rotary_pos_emb_interleave.
        interleaved = kind != "DeepseekV3Attention" or config.rope_interleave
        layout = "interleaved" if interleaved else "half"
        mla = dict(hidden=config.hidden_size, heads=module.num_heads, d_c=module.kv_lora_rank,
                   d_r=module.qk_rope_head_dim, nope_head_dim=module.qk_nope_head_dim,
                   v_head_dim=module.v_head_dim, q_rank=module.q_lora_rank, rope_layout=layout,
                   softmax_scale=float(module.scaling), attention_bias=bool(config.attention_bias),
                   norm_eps=float(module.kv_a_layernorm.variance_epsilon))
        rope = _family_rope(module, module.qk_rope_head_dim, layout)
        with torch.device(weight.device):
            if kind in _DSA:
                indexer = module.indexer
                cfg = DSAConfig(**mla, index_heads=indexer.n_heads, index_head_dim=indexer.head_dim,
                                index_topk=indexer.index_topk, index_norm_eps=float(indexer.k_norm.eps))
                layer: AttentionLayer = DSA(cfg, rope=rope)
            else:
                layer = MLA(MLAConfig(**mla), rope=rope)
        names = _DSA_NAMES if kind in _DSA else _MLA_NAMES
    else:
        heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
        common: dict[str, Any] = {
            "hidden": config.hidden_size, "heads": heads, "kv_heads": kv_heads, "head_dim": module.head_dim,
            "qkv_bias": module.q_proj.bias is not None, "o_bias": module.o_proj.bias is not None,
            "softmax_scale": float(module.scaling)}
        # GptOss sets module.sliding_window on its window layers only; Mistral's is the config's.
        window = getattr(module, "sliding_window", None) if kind == "GptOssAttention" else \
            getattr(config, "sliding_window", None)
        sinks = kind == "GptOssAttention"
        rope = _family_rope(module, module.head_dim, "half")
        with torch.device(weight.device):
            if window is not None or sinks:
                layer = SWA(SWAConfig(**common, window=window, learned_sinks=sinks), rope=rope)
            else:
                variant = "mha" if kv_heads == heads else "mqa" if kv_heads == 1 else "gqa"
                layer = GQA(GQAConfig(**common), variant=variant, rope=rope)
        names = _GQA_NAMES
    layer = layer.to(dtype=weight.dtype)
    state = {}
    for hf_name, ours in names.items():
        source = getattr(module, hf_name, None)
        if source is None:
            continue
        for param_name, tensor in source.state_dict().items():
            state[f"{ours}.{param_name}"] = tensor
    if getattr(module, "sinks", None) is not None:
        state["sinks"] = module.sinks.detach()
    layer.load_state_dict(state, strict=True)
    return layer
