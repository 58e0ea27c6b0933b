"""Tiny shapes for CPU tests: every dimension distinct so a transposed weight cannot pass."""

from variants.shape import ModelShape

TINY = ModelShape(hidden=24, heads=4, head_dim=8, kv_heads=2, d_c=10, d_r=4, q_rank=None,
                  nope_head_dim=6, v_head_dim=5, rope_theta=10000.0, rope_layout="interleaved", name="test")
TINY_Q = TINY.replace(q_rank=7)
VARIANTS = ("mha", "mqa", "gqa", "mla")
