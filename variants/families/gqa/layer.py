"""Grouped-query attention (Ainslie et al. 2023); MHA and MQA are its settings K = N and K = 1.

Legend: B batch, L new queries, M tokens whose K/V a step computes, T visible keys, D hidden,
N query heads, K kv heads, H head dim.

Cache per token and layer: K and V of ``[K, H]`` each, i.e. ``2·K·H`` elements
(DeepSeek-V2, Table 1: MHA ``2·n_h·d_h``, GQA ``2·n_g·d_h``, MQA ``2·d_h``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from variants.cache import CacheField, CacheLayout
from variants.cost import Cost, matmul_flops
from variants.kernel import Kernel
from variants.layer import AttentionLayer, Step, StepRunner
from variants.registry import register_variant
from variants.rope import Rope
from variants.shape import (
    ATTENTION_KINDS,
    KV_DTYPES,
    AttentionKind,
    KvDtype,
    ModelShape,
    RopeLayout,
    check_choice,
    check_positive,
    divisors,
)
from variants.variant import VariantSpec


@dataclass(frozen=True)
class GQAConfig:
    hidden: int  # D
    heads: int  # N
    kv_heads: int  # K, divides N
    head_dim: int  # H
    qkv_bias: bool = False  # Qwen2
    o_bias: bool = False  # Llama's attention_bias puts a bias on all four projections
    rope_theta: float = 10000.0
    rope_layout: RopeLayout = "half"
    attention: AttentionKind = "self"
    softmax_scale: float | None = None  # None: 1 / sqrt(H)
    kv_dtype: KvDtype = "auto"  # cache storage (variants.cache, CacheLayout.stored_as)

    def __post_init__(self) -> None:
        check_choice("kv_dtype", self.kv_dtype, KV_DTYPES)
        for name in ("hidden", "heads", "kv_heads", "head_dim"):
            check_positive(name, getattr(self, name))
        if self.heads % self.kv_heads:
            valid = ", ".join(map(str, divisors(self.heads)))
            raise ValueError(f"kv_heads={self.kv_heads} does not divide heads={self.heads}; "
                             f"valid kv_heads: {valid}")
        check_choice("attention", self.attention, ATTENTION_KINDS)
        if self.attention == "self" and self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} is odd; RoPE rotates pairs, so it must be even")


class GQA(AttentionLayer):
    paths = ("standard",)

    def __init__(self, config: GQAConfig, *, variant: str = "gqa", rope: Rope | None = None) -> None:
        super().__init__()
        c = config
        self.config = c
        self.variant = variant
        self.attention = c.attention
        self.hidden = c.hidden
        self.kv_dtype = c.kv_dtype
        N, K, H, D = c.heads, c.kv_heads, c.head_dim, c.hidden
        self.q_proj = nn.Linear(D, N * H, bias=c.qkv_bias)
        self.k_proj = nn.Linear(D, K * H, bias=c.qkv_bias)
        self.v_proj = nn.Linear(D, K * H, bias=c.qkv_bias)
        self.o_proj = nn.Linear(N * H, D, bias=c.o_bias)
        # Cross-attention applies no RoPE: queries and memory are different sequences, so their
        # relative position means nothing (as in T5, Whisper and mllama's cross layers).
        if c.attention == "self":
            self.rope: Rope | None = rope or Rope(H, theta=c.rope_theta, layout=c.rope_layout)
        else:
            self.rope = None
        self.scale = c.softmax_scale if c.softmax_scale is not None else H ** -0.5

    def cache_layout(self, path: str) -> CacheLayout:
        assert path in self.paths
        K, H = self.config.kv_heads, self.config.head_dim
        return CacheLayout((CacheField("k", (K, H)), CacheField("v", (K, H)))).stored_as(self.kv_dtype)

    def step_runner(self, path: str, kernel: Kernel, **options: Any) -> StepRunner:
        assert path == "standard" and not options
        return lambda step: self._standard(step, kernel)

    def _standard(self, step: Step, attend: Kernel) -> Tensor:
        q_BLNH, k_BMKH, v_BMKH = self._project(step)
        if k_BMKH is not None:
            step.cache.write(step.kv_start, k=k_BMKH, v=v_BMKH)
        k_BTKH = step.cache.read("k", step.kv_len)
        v_BTKH = step.cache.read("v", step.kv_len)
        return self._output(attend(q_BLNH, k_BTKH, v_BTKH, scale=self.scale, mask=step.mask))

    def _project(self, step: Step) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """The rotated queries, and the rotated keys and values of the tokens the step computes."""
        c = self.config
        x_BLD = step.x_BLD
        B, L, _ = x_BLD.shape
        q_BLNH = self.q_proj(x_BLD).view(B, L, c.heads, c.head_dim)
        if self.rope is not None:
            q_BLNH = self.rope(q_BLNH, step.q_start)
        if step.kv_x_BMD is None:
            return q_BLNH, None, None
        M = step.kv_x_BMD.shape[1]
        k_BMKH = self.k_proj(step.kv_x_BMD).view(B, M, c.kv_heads, c.head_dim)
        v_BMKH = self.v_proj(step.kv_x_BMD).view(B, M, c.kv_heads, c.head_dim)
        if self.rope is not None:
            k_BMKH = self.rope(k_BMKH, step.kv_start)
        return q_BLNH, k_BMKH, v_BMKH

    def _output(self, o_BLNH: Tensor) -> Tensor:
        B, L = o_BLNH.shape[:2]
        return self.o_proj(o_BLNH.reshape(B, L, self.config.heads * self.config.head_dim))

    def cost(self, *, path: str, batch: int, q_len: int, cached: int, new_kv: int,
             dtype: torch.dtype | None = None, **options: Any) -> Cost:
        assert path == "standard" and not options
        c = self.config
        b = (dtype or self.dtype).itemsize
        B, L, S, W = batch, q_len, cached, new_kv
        T = S + W
        D, N, K, H = c.hidden, c.heads, c.kv_heads, c.head_dim
        flops = (matmul_flops(B * L, D, N * H)  # q_proj
                 + 2 * matmul_flops(B * W, D, K * H)  # k_proj, v_proj on the new tokens
                 + matmul_flops(B * N * L, H, T)  # scores
                 + matmul_flops(B * N * L, T, H)  # probabilities x values
                 + matmul_flops(B * L, N * H, D))  # o_proj
        q_o = D * N * H + N * H * D + (N * H if c.qkv_bias else 0) + (D if c.o_bias else 0)
        kv = 2 * D * K * H + (2 * K * H if c.qkv_bias else 0)
        kv_bytes = self.kv_bytes_per_token(path, dtype)
        memory_in = W if self.attention == "cross" else 0
        return Cost(
            flops=flops,
            weight_bytes=(q_o + (kv if W else 0)) * b,
            cache_read_bytes=B * S * kv_bytes,
            cache_write_bytes=B * W * kv_bytes,
            activation_bytes=B * (2 * L + memory_in) * D * b,
            params=q_o + kv,
            kv_bytes_per_token=kv_bytes,
            score_elements=B * N * L * T, qk_dim=H, v_dim=H,
            # q and o, the new K/V, and a copy of the visible K/V that grouped einsums may make.
            transient_bytes=(2 * B * L * N * H + 2 * B * (W + T) * K * H + B * L * D) * b,
        )


def _settings(name: str, kv_heads_of: Any, description: str) -> VariantSpec:
    def make(shape: ModelShape, attention: AttentionKind) -> GQA:
        config = GQAConfig(hidden=shape.hidden, heads=shape.heads, kv_heads=kv_heads_of(shape),
                           head_dim=shape.head_dim, qkv_bias=shape.qkv_bias, rope_theta=shape.rope_theta,
                           rope_layout=shape.rope_layout, attention=attention, kv_dtype=shape.kv_dtype)
        return GQA(config, variant=name)

    uses = ("hidden", "heads", "head_dim", "qkv_bias", "rope_theta", "rope_layout", "kv_dtype")
    return VariantSpec(name, GQA, description, make, uses + (("kv_heads",) if name == "gqa" else ()))


MHA = register_variant(_settings("mha", lambda s: s.heads, "multi-head attention: K = N kv heads"))
MQA = register_variant(_settings("mqa", lambda s: 1, "multi-query attention: K = 1 kv head"))
GQA_SPEC = register_variant(_settings(
    "gqa", lambda s: s.kv_heads or s.heads, "grouped-query attention: K = kv_heads of the shape"))
