"""``from_hf`` for transformers' ``Qwen3NextGatedDeltaNet``: the same parameters, by name, no copied code.

The layer keeps transformers' parameter names and layouts (``in_proj_qkvz`` grouped per key head,
``in_proj_ba``, ``conv1d.weight`` ``[C, 1, W]``, ``dt_bias``, ``A_log``, ``norm.weight``,
``out_proj``), so the conversion is a strict ``load_state_dict``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from attnbench.variants.families.gdn.layer import GDN, GDNConfig

HF_CLASSES: tuple[str, ...] = ("Qwen3NextGatedDeltaNet",)


def from_hf(module: nn.Module) -> GDN:
    """A ``gdn`` layer holding a ``Qwen3NextGatedDeltaNet``'s weights (same dtype and device)."""
    kind = type(module).__name__
    if kind not in HF_CLASSES:
        raise ValueError(f"cannot convert {kind} to gdn; supported: {', '.join(HF_CLASSES)}")
    m: Any = module
    if m.activation != "silu":
        raise ValueError(f"{kind}: hidden_act={m.activation!r}; the gdn layer's convolution applies silu")
    config = GDNConfig(hidden=m.hidden_size, key_heads=m.num_k_heads, value_heads=m.num_v_heads, k_dim=m.head_k_dim,
                       v_dim=m.head_v_dim, conv_kernel=m.conv_kernel_size, norm_eps=float(m.layer_norm_epsilon))
    weight = next(module.parameters())
    with torch.device(weight.device):
        layer = GDN(config).to(dtype=weight.dtype)
    layer.load_state_dict(module.state_dict(), strict=True)
    return layer
