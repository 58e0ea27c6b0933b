"""Tiny shapes for CPU tests: every dimension distinct so a transposed weight cannot pass."""

from __future__ import annotations

import dataclasses

import torch

from attnbench.variants.families.mla import MLA, MLAConfig
from attnbench.variants.rope import Rope, default_inv_freq
from attnbench.variants.shape import ModelShape

TINY = ModelShape(hidden=24, heads=4, head_dim=8, kv_heads=2, d_c=10, d_r=4, q_rank=None,
                  nope_head_dim=6, v_head_dim=5, rope_theta=10000.0, rope_layout="interleaved", name="test")
TINY_Q = TINY.replace(q_rank=7)
VARIANTS = ("mha", "mqa", "gqa", "mla")
# Implementations that compile on their first call (seconds per graph on a 2-core CPU; FlopCounterMode
# cannot look inside a compiled flex_attention). The loops over every implementation leave them out;
# tests/test_flex.py checks flex against eager, and its cost is the standard path's, counted for eager.
COMPILING = ("flex",)

# MLA settings that layers converted from GQA use (variants.convert): several rotary keys per token,
# each group with its own frequencies, no RMSNorm on the latent, no nope dims.
_MLA_BASE = MLAConfig(hidden=24, heads=4, d_c=10, d_r=4, nope_head_dim=6, v_head_dim=5, rope_layout="half")
MLA_SETTINGS = {
    "rope_heads2-own-freqs-no-norm": (dataclasses.replace(_MLA_BASE, rope_heads=2, latent_norm=False), True),
    "rope_heads4-no-nope-q7": (dataclasses.replace(_MLA_BASE, rope_heads=4, nope_head_dim=0, q_rank=7), True),
    "rope_heads2-shared-freqs-interleaved": (
        dataclasses.replace(_MLA_BASE, rope_heads=2, rope_layout="interleaved", softmax_scale=0.3), False),
}


def build_mla(name: str, *, dtype: torch.dtype = torch.float32, seed: int | None = None,
              attention: str = "self") -> MLA:
    """An MLA layer with one of ``MLA_SETTINGS``; per-group frequencies are distinct subsets of the
    default ones, as a conversion would pick them."""
    config, own_freqs = MLA_SETTINGS[name]
    config = dataclasses.replace(config, attention=attention)
    G, R = config.rope_heads, config.d_r
    rope = None
    if own_freqs and attention == "self":
        all_F = default_inv_freq(G * R, config.rope_theta)  # G·R/2 distinct frequencies
        rope = Rope(R, layout=config.rope_layout, inv_freq=all_F.view(R // 2, G).T.contiguous())
    with torch.random.fork_rng():
        if seed is not None:
            torch.manual_seed(seed)
        layer = MLA(config, rope=rope)
        if config.latent_norm:  # a non-trivial norm weight, so that dropping the norm would show
            torch.nn.init.uniform_(layer.kv_a_norm.weight, 0.5, 1.5)
    return layer.to(dtype)
