"""``from_hf`` for transformers' ``KimiLinearDeltaAttention``: the same parameters, by name, no copied code."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from attnbench.variants.families.kda.layer import KDA, KDAConfig

HF_CLASSES: tuple[str, ...] = ("KimiLinearDeltaAttention",)


def from_hf(module: nn.Module) -> KDA:
    """A ``kda`` layer holding a ``KimiLinearDeltaAttention``'s weights (same dtype and device)."""
    kind = type(module).__name__
    if kind not in HF_CLASSES:
        raise ValueError(f"cannot convert {kind} to kda; supported: {', '.join(HF_CLASSES)}")
    m: Any = module
    if m.activation != "silu":
        raise ValueError(f"{kind}: hidden_act={m.activation!r}; the kda layer's convolution applies silu")
    config = KDAConfig(hidden=m.hidden_size, key_heads=m.num_heads, value_heads=m.num_heads, k_dim=m.head_dim,
                       v_dim=m.head_dim, conv_kernel=m.conv_kernel_size, norm_eps=float(m.layer_norm_epsilon))
    weight = next(module.parameters())
    with torch.device(weight.device):
        layer = KDA(config).to(dtype=weight.dtype)
    layer.load_state_dict(module.state_dict(), strict=True)
    return layer
