"""MLA layers as transformers' DeepseekV3Attention (``rope_interleave`` for the interleaved layout).

Legend: B batch, S cache rows, C latent (kv_lora_rank), R rotary dim.

transformers 5.23's DeepseekV3Attention caches the latent, as attnbench's standard path does: its
cache layer holds ``kv_nope`` ``[B, 1, S, C]`` as keys and ``k_rot`` ``[B, 1, S, R]`` as values and
up-projects the whole cache every step (``expand_kv``). Both are views of attnbench's packed rows
``[c_kv; k_rope]``. One difference in what is stored: transformers returns rotated pairs split into
halves (``apply_rotary_pos_emb_interleave`` concatenates the even and the odd results), so for an
interleaved layer the R rotary columns hf writes are attnbench's in another order. A cache hf wrote
is read by hf (every harness case has its own cache); one filled by another implementation (not
by ``fill_random_``) would pair its keys with hf's queries in the wrong order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from attnbench.variants.families.mla import MLA
from attnbench.variants.hf import _MLA_NAMES
from attnbench.variants.hf_peer import HFSpec, register, weight_names

if TYPE_CHECKING:
    from torch import Tensor

    from attnbench.variants.cache import KVCache


def latent_views(cache: KVCache) -> tuple[Tensor, Tensor]:
    """``c_kv`` and ``k_rope`` as transformers' cache layer holds them, ``[B, 1, S, C]`` and ``[B, 1, S, R]``."""
    return cache["c_kv"].unsqueeze(1), cache["k_rope"].unsqueeze(1)


@register(MLA)
def deepseek_v3(layer: MLA) -> HFSpec | str:
    c = layer.config
    if layer.attention != "self":
        return ("hf runs transformers' decoder attention (DeepseekV3Attention), which attends to its own sequence; "
                "this layer is cross-attention")
    if c.rope_heads != 1:
        return (f"DeepseekV3Attention caches one rotary key shared by all heads; this layer has rope_heads="
                f"{c.rope_heads} (a layer converted from GQA)")
    if c.nope:
        return ("a NoPE MLA layer (Kimi Linear's) is transformers' KimiLinearAttention, which takes no position "
                "embeddings; hf runs DeepseekV3Attention, which rotates (use eager, sdpa or absorbed)")
    if not c.latent_norm:
        return ("DeepseekV3Attention normalises the latent (kv_a_layernorm); this layer has latent_norm=False "
                "(a layer converted from GQA)")
    config = {"hidden_size": c.hidden, "num_attention_heads": c.heads, "num_key_value_heads": c.heads,
              "q_lora_rank": c.q_rank, "kv_lora_rank": c.d_c, "qk_rope_head_dim": c.d_r,
              "qk_nope_head_dim": c.nope_head_dim, "v_head_dim": c.v_head_dim, "attention_bias": c.attention_bias,
              "rope_interleave": c.rope_layout == "interleaved", "num_hidden_layers": 1,
              # The rotary frequencies are the layer's own (set on the rotary module at plan time).
              "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta}}
    # DeepseekV3RMSNorm is built with eps=1e-6, and the scale from the config's YaRN settings: the layer's.
    attributes = {"scaling": layer.scale, "kv_a_layernorm.variance_epsilon": c.norm_eps}
    if c.q_rank is not None:
        attributes["q_a_layernorm.variance_epsilon"] = c.norm_eps
    return HFSpec(modeling="transformers.models.deepseek_v3.modeling_deepseek_v3", attention="DeepseekV3Attention",
                  config="DeepseekV3Config", config_kwargs=config, weights=weight_names(_MLA_NAMES, layer),
                  cache=latent_views, attributes=attributes)
