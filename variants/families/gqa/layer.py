"""Grouped-query attention (Ainslie et al. 2023); MHA and MQA are its settings K = N and K = 1.

Legend: B batch, L new queries, M tokens whose K/V a step computes, T visible keys, D hidden,
N query heads, K kv heads, H head dim, R rotary dims (R = H unless RoPE is partial).

Qwen3-Next's gated full-attention layer is three settings of this one (transformers'
``Qwen3NextAttention``): ``output_gate`` (the query projection emits, per head, the query and then
a gate of H more dims; the attention output is multiplied by ``sigmoid(gate)`` before ``o_proj``),
``partial_rotary_factor`` (RoPE on the first R = H·factor dims of q and k only, 0.25 there) and
``qk_norm`` (an RMSNorm over each head's H dims of q and k before RoPE; ``zero_centered`` scales
by ``1 + w``, Qwen3-Next's form with w initialised to 0).

Cache per token and layer: K and V of ``[K, H]`` each, i.e. ``2·K·H`` elements
(DeepSeek-V2, Table 1: MHA ``2·n_h·d_h``, GQA ``2·n_g·d_h``, MQA ``2·d_h``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from attnbench.variants.cache import CacheField, CacheLayout
from attnbench.variants.cost import Cost, matmul_flops
from attnbench.variants.kernel import Kernel
from attnbench.variants.layer import AttentionLayer, Step, StepRunner
from attnbench.variants.registry import register_variant
from attnbench.variants.rope import Rope
from attnbench.variants.shape import (
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
from attnbench.variants.families.gqa.shape import QK_NORMS
from attnbench.variants.variant import VariantSpec


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
    output_gate: bool = False  # Qwen3-Next: sigmoid gate on the attention output, from q_proj
    partial_rotary_factor: float = 1.0  # RoPE on the first int(H * factor) dims (Qwen3-Next: 0.25)
    qk_norm: str = "none"  # RMSNorm of each q and k head: none, rms (w) or zero_centered (1 + w)
    norm_eps: float = 1e-6  # of the q/k RMSNorm (Qwen3-Next's rms_norm_eps)

    def __post_init__(self) -> None:
        check_choice("kv_dtype", self.kv_dtype, KV_DTYPES)
        check_choice("qk_norm", self.qk_norm, QK_NORMS)
        for name in ("hidden", "heads", "kv_heads", "head_dim"):
            check_positive(name, getattr(self, name))
        if self.heads % self.kv_heads:
            valid = ", ".join(map(str, divisors(self.heads)))
            raise ValueError(f"kv_heads={self.kv_heads} does not divide heads={self.heads}; "
                             f"valid kv_heads: {valid}")
        check_choice("attention", self.attention, ATTENTION_KINDS)
        if self.attention == "self" and self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} is odd; RoPE rotates pairs, so it must be even")
        if not 0 < self.partial_rotary_factor <= 1 or (self.attention == "self" and (self.rotary_dim % 2
                                                                                   or not self.rotary_dim)):
            raise ValueError(f"partial_rotary_factor={self.partial_rotary_factor!r} is not allowed: it must be in "
                             f"(0, 1] and give an even, positive rotary dim int(head_dim * factor) "
                             f"(head_dim={self.head_dim})")

    @property
    def rotary_dim(self) -> int:
        """R: the leading dims of each q and k head that RoPE rotates (transformers: int(H * factor))."""
        return int(self.head_dim * self.partial_rotary_factor)


class ZeroCenteredRMSNorm(nn.Module):
    """RMSNorm scaling by ``1 + weight`` (weight initialised to 0): Qwen3-Next's ``Qwen3NextRMSNorm``,
    with the same parameter, so its weights map by name. Computed in the input's dtype."""

    def __init__(self, dim: int, *, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * (1.0 + self.weight)


def _qk_norm(kind: str, dim: int, eps: float) -> nn.Module | None:
    if kind == "none":
        return None
    return nn.RMSNorm(dim, eps=eps) if kind == "rms" else ZeroCenteredRMSNorm(dim, eps=eps)


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
        # With the output gate, each head's H query dims are followed by its H gate dims (Qwen3-Next's layout).
        self.q_proj = nn.Linear(D, N * H * (2 if c.output_gate else 1), bias=c.qkv_bias)
        self.k_proj = nn.Linear(D, K * H, bias=c.qkv_bias)
        self.v_proj = nn.Linear(D, K * H, bias=c.qkv_bias)
        self.o_proj = nn.Linear(N * H, D, bias=c.o_bias)
        self.q_norm = _qk_norm(c.qk_norm, H, c.norm_eps)
        self.k_norm = _qk_norm(c.qk_norm, H, c.norm_eps)
        # Cross-attention applies no RoPE: queries and memory are different sequences, so their
        # relative position means nothing (as in T5, Whisper and mllama's cross layers).
        if c.attention == "self":
            self.rope: Rope | None = rope or Rope(c.rotary_dim, theta=c.rope_theta, layout=c.rope_layout)
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
        q_BLNH, k_BMKH, v_BMKH, gate_BLNH = self._project_gated(step)
        if k_BMKH is not None:
            step.cache.write(step.kv_start, k=k_BMKH, v=v_BMKH)
        k_BTKH = step.cache.read("k", step.kv_len)
        v_BTKH = step.cache.read("v", step.kv_len)
        o_BLNH = attend(q_BLNH, k_BTKH, v_BTKH, scale=self.scale, mask=step.mask)
        if gate_BLNH is not None:
            o_BLNH = o_BLNH * torch.sigmoid(gate_BLNH)  # Qwen3-Next's gated attention
        return self._output(o_BLNH)

    def _project(self, step: Step) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """The rotated queries, and the rotated keys and values of the tokens the step computes
        (a layer with an output gate runs ``_project_gated``, which also returns the gate)."""
        assert not self.config.output_gate, "a gated layer's steps take the gate from _project_gated"
        return self._project_gated(step)[:3]

    def _project_gated(self, step: Step) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
        """``_project``'s tensors and the output gate's logits ``[B, L, N, H]`` (None: no gate)."""
        c = self.config
        x_BLD = step.x_BLD
        B, L, _ = x_BLD.shape
        q_BLNX = self.q_proj(x_BLD).view(B, L, c.heads, -1)
        gate_BLNH = None
        if c.output_gate:
            q_BLNX, gate_BLNH = q_BLNX.split(c.head_dim, dim=-1)
        q_BLNH = self._rotate(self._normed(self.q_norm, q_BLNX), step.q_start)
        if step.kv_x_BMD is None:
            return q_BLNH, None, None, gate_BLNH
        M = step.kv_x_BMD.shape[1]
        k_BMKH = self._normed(self.k_norm, self.k_proj(step.kv_x_BMD).view(B, M, c.kv_heads, c.head_dim))
        v_BMKH = self.v_proj(step.kv_x_BMD).view(B, M, c.kv_heads, c.head_dim)
        return q_BLNH, self._rotate(k_BMKH, step.kv_start), v_BMKH, gate_BLNH

    @staticmethod
    def _normed(norm: nn.Module | None, x_BLNH: Tensor) -> Tensor:
        return x_BLNH if norm is None else norm(x_BLNH)

    def _rotate(self, x_BLNH: Tensor, start: int | Tensor | None) -> Tensor:
        """RoPE on the first R dims of each head, the rest passed through (transformers' partial rotary)."""
        if self.rope is None:
            return x_BLNH
        R = self.config.rotary_dim
        if R == self.config.head_dim:
            return self.rope(x_BLNH, start)
        x_BLNR, x_pass = x_BLNH.split([R, self.config.head_dim - R], dim=-1)
        return torch.cat((self.rope(x_BLNR, start), x_pass), dim=-1)

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
        G = 2 if c.output_gate else 1  # q_proj also emits the gate
        flops = (matmul_flops(B * L, D, G * N * H)  # q_proj
                 + 2 * matmul_flops(B * W, D, K * H)  # k_proj, v_proj on the new tokens
                 + matmul_flops(B * N * L, H, T)  # scores
                 + matmul_flops(B * N * L, T, H)  # probabilities x values
                 + matmul_flops(B * L, N * H, D))  # o_proj
        q_o = G * D * N * H + N * H * D + (G * N * H if c.qkv_bias else 0) + (D if c.o_bias else 0)
        q_o += H if c.qk_norm != "none" else 0  # q_norm's weight
        kv = 2 * D * K * H + (2 * K * H if c.qkv_bias else 0) + (H if c.qk_norm != "none" else 0)
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
            transient_bytes=((G + 1) * B * L * N * H + 2 * B * (W + T) * K * H + B * L * D) * b,
        )


def _settings(name: str, kv_heads_of: Any, description: str) -> VariantSpec:
    def make(shape: ModelShape, attention: AttentionKind) -> GQA:
        config = GQAConfig(hidden=shape.hidden, heads=shape.heads, kv_heads=kv_heads_of(shape),
                           head_dim=shape.head_dim, qkv_bias=shape.qkv_bias, rope_theta=shape.rope_theta,
                           rope_layout=shape.rope_layout, attention=attention, kv_dtype=shape.kv_dtype,
                           output_gate=shape.attn_output_gate, partial_rotary_factor=shape.partial_rotary_factor,
                           qk_norm=shape.qk_norm)
        return GQA(config, variant=name)

    uses = ("hidden", "heads", "head_dim", "qkv_bias", "rope_theta", "rope_layout", "kv_dtype", "attn_output_gate",
            "partial_rotary_factor", "qk_norm")
    return VariantSpec(name, GQA, description, make, uses + (("kv_heads",) if name == "gqa" else ()))


MHA = register_variant(_settings("mha", lambda s: s.heads, "multi-head attention: K = N kv heads"))
MQA = register_variant(_settings("mqa", lambda s: 1, "multi-query attention: K = 1 kv head"))
GQA_SPEC = register_variant(_settings(
    "gqa", lambda s: s.kv_heads or s.heads, "grouped-query attention: K = kv_heads of the shape"))
