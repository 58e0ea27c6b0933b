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

from attnbench.variants.families.dsa import DSA, DSAConfig
from attnbench.variants.families.dsv4 import DSV4, DSV4Config
from attnbench.variants.families.gqa import GQA, GQA_SPEC, MHA, MQA, GQAConfig
from attnbench.variants.families.mla import MLA, MLAConfig
from attnbench.variants.families.swa import SWA, SWAConfig
from attnbench.variants.layer import AttentionLayer
from attnbench.variants.registry import families
from attnbench.variants.rope import Rope

_MLA = ("DeepseekV2Attention", "DeepseekV3Attention")
_DSA = ("DeepseekV32Attention",)
_GQA = ("LlamaAttention", "MistralAttention", "Qwen2Attention", "GptOssAttention")
_DSV4 = ("DeepseekV4Attention",)
_QWEN3_NEXT = ("Qwen3NextAttention",)  # Qwen3-Next's gated full-attention layers
_KIMI = ("KimiLinearAttention",)  # Kimi Linear's MLA layers (NoPE)

# Hugging Face module name -> attnbench module name.
_MLA_NAMES = {"q_proj": "q_proj", "q_a_proj": "q_a_proj", "q_a_layernorm": "q_a_norm", "q_b_proj": "q_b_proj",
              "kv_a_proj_with_mqa": "kv_a_proj", "kv_a_layernorm": "kv_a_norm", "kv_b_proj": "kv_b_proj",
              "o_proj": "o_proj"}
# DeepSeek-V3.2's indexer keeps transformers' names (wq_b, wk, k_norm, weights_proj) under ``indexer``.
_DSA_NAMES = {**_MLA_NAMES, "indexer": "indexer"}
_GQA_NAMES = {name: name for name in ("q_proj", "k_proj", "v_proj", "o_proj")}
# Qwen3-Next: the same names plus its q/k norms (Qwen3NextRMSNorm, 1 + w: our ZeroCenteredRMSNorm).
_QWEN3_NEXT_NAMES = {**_GQA_NAMES, "q_norm": "q_norm", "k_norm": "k_norm"}
# DeepSeek-V4: the same names, but transformers keeps the indexer inside the compressor (first match wins).
_DSV4_PREFIXES = (("compressor.indexer.scorer.", "indexer."), ("compressor.indexer.q_b_proj.", "indexer.q_b_proj."),
                  ("compressor.indexer.", "indexer.compressor."))
_DSV4_KINDS = {"sliding_attention": "S", "compressed_sparse_attention": "C", "heavily_compressed_attention": "H"}


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
                         f"expected {rotary_dim // 2}")
    return Rope(rotary_dim, layout=layout, inv_freq=inv_freq, scaling=float(rotary.attention_scaling))


def _dsv4(module: nn.Module) -> AttentionLayer:
    """DeepSeek-V4: its layer type picks the kind (window only, CSA, HCA); the rotary frequencies are
    those of the family's rotary class for the layer's rope type (``main`` or ``compress``, which may
    carry YaRN)."""
    config: Any = module.config
    kind = _DSV4_KINDS[module.layer_type]
    rates = config.compress_rates
    cfg = DSV4Config(hidden=config.hidden_size, heads=module.num_heads, head_dim=module.head_dim,
                     q_rank=config.q_lora_rank, rope_dim=config.qk_rope_head_dim, kind=kind,
                     window=config.sliding_window, csa_rate=rates["compressed_sparse_attention"],
                     hca_rate=rates["heavily_compressed_attention"], index_heads=config.index_n_heads,
                     index_head_dim=config.index_head_dim, index_topk=config.index_topk, o_groups=config.o_groups,
                     o_rank=config.o_lora_rank, norm_eps=float(config.rms_norm_eps))
    family = sys.modules[type(module).__module__]
    rotary = family.DeepseekV4RotaryEmbedding(config)
    rope_type = module.rope_layer_type  # "main" on window-only layers, "compress" on CSA/HCA ones
    inv_freq = getattr(rotary, f"{rope_type}_inv_freq").detach().float().cpu()
    if inv_freq.numel() != cfg.rope_dim // 2:
        raise ValueError(f"DeepseekV4Attention: rotary class gives {inv_freq.numel()} frequencies, "
                         f"expected {cfg.rope_dim // 2}")
    rope = Rope(cfg.rope_dim, layout="interleaved", inv_freq=inv_freq,
                scaling=float(getattr(rotary, f"{rope_type}_attention_scaling")))
    weight = next(module.parameters())
    with torch.device(weight.device):
        layer = DSV4(cfg, rope=rope).to(dtype=weight.dtype)
    state = {}
    for name, tensor in module.state_dict().items():
        ours = next((new + name[len(old):] for old, new in _DSV4_PREFIXES if name.startswith(old)), name)
        state[ours] = tensor
    layer.load_state_dict(state, strict=True)
    return layer


def from_hf(module: nn.Module) -> AttentionLayer:
    """Convert a DeepseekV2/V3/V3.2/V4, Llama, Mistral, Qwen2, GptOss, Qwen3Next or KimiLinear attention module
    (same dtype and device), or a linear-attention module a family declares (``Family.from_hf``:
    Qwen3NextGatedDeltaNet to ``gdn``, KimiLinearDeltaAttention to ``kda``).

    A Qwen3Next module (its full-attention layers) becomes a ``gqa`` layer with the output gate,
    partial RoPE and zero-centred q/k norms; a KimiLinearAttention module (its MLA layers) an ``mla``
    layer with no RoPE (``nope``).

    A windowed Mistral module (``config.sliding_window``) and every GptOss module become ``swa``
    layers: gpt-oss's window layers (``layer_types[layer_idx] == "sliding_attention"``) keep its
    window, its full layers have none, and all keep its learned sinks. A DeepseekV32 module becomes
    a ``dsa`` layer: its MLA rotates interleaved pairs, its indexer half-split ones at the same
    frequencies. A DeepseekV4 module becomes a ``csa`` or ``hca`` layer, or a window-only one
    (variant ``dsv4_window``), as its layer type says.
    """
    kind = type(module).__name__
    # Families that carry their own converter (the linear families: Gated DeltaNet, KDA) declare it.
    converters = {name: convert for family in families() for name, convert in family.from_hf.items()}
    supported = _MLA + _DSA + _GQA + _DSV4 + _QWEN3_NEXT + _KIMI + tuple(sorted(converters))
    if kind not in supported:
        raise ValueError(f"cannot convert {kind}; supported: {', '.join(supported)}")
    if kind in converters:
        return converters[kind](module)
    if kind in _DSV4:
        return _dsv4(module)
    if kind in _QWEN3_NEXT:
        return _load(_qwen3_next(module), module, _QWEN3_NEXT_NAMES)
    if kind in _KIMI:
        return _load(_kimi_mla(module), module, _MLA_NAMES)
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
                spec = MHA if kv_heads == heads else MQA if kv_heads == 1 else GQA_SPEC
                layer = GQA(GQAConfig(**common), variant=spec.name, rope=rope)
        names = _GQA_NAMES
    return _load(layer, module, names)


def _load(layer: AttentionLayer, module: nn.Module, names: dict[str, str]) -> AttentionLayer:
    """``layer`` in ``module``'s dtype holding its weights, mapped by module name."""
    layer = layer.to(dtype=next(module.parameters()).dtype)
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


def _qwen3_next(module: nn.Module) -> GQA:
    """Qwen3-Next's gated full attention: a gqa layer with the output gate, partial RoPE (the rotary
    class's frequencies cover int(head_dim * partial_rotary_factor) dims) and zero-centred q/k norms."""
    config: Any = module.config
    factor = float(config.rope_parameters.get("partial_rotary_factor", 1.0))
    cfg = GQAConfig(hidden=config.hidden_size, heads=config.num_attention_heads,
                    kv_heads=config.num_key_value_heads, head_dim=module.head_dim,
                    qkv_bias=module.k_proj.bias is not None, o_bias=module.o_proj.bias is not None,
                    softmax_scale=float(module.scaling), output_gate=True, partial_rotary_factor=factor,
                    qk_norm="zero_centered", norm_eps=float(module.q_norm.eps))
    rope = _family_rope(module, cfg.rotary_dim, "half")
    with torch.device(next(module.parameters()).device):
        return GQA(cfg, variant=GQA_SPEC.name, rope=rope)


def _kimi_mla(module: nn.Module) -> MLA:
    """Kimi Linear's MLA layer: DeepSeek's projections and latent with no RoPE at all (NoPE; its
    forward takes no position embeddings), no query compression in the released model."""
    config: Any = module.config
    cfg = MLAConfig(hidden=config.hidden_size, heads=module.num_heads, d_c=module.kv_lora_rank,
                    d_r=module.qk_rope_head_dim, nope_head_dim=module.qk_nope_head_dim,
                    v_head_dim=module.v_head_dim, q_rank=module.q_lora_rank, softmax_scale=float(module.scaling),
                    attention_bias=bool(config.attention_bias),
                    norm_eps=float(module.kv_a_layernorm.variance_epsilon), nope=True)
    with torch.device(next(module.parameters()).device):
        return MLA(cfg)
