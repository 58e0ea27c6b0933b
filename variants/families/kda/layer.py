"""Kimi Delta Attention as Kimi Linear defines it: the gated delta rule with a per-channel decay.

Legend: B batch, L tokens of the step, D hidden, H heads (key and value heads alike), K head dim (keys
and values alike), C conv channels (3·H·K), W conv kernel.

One step (transformers' ``KimiLinearDeltaAttention``; Kimi Linear tech report, 2025, sec. 2):
1. ``q_proj``, ``k_proj``, ``v_proj`` (H·K each), a depthwise causal convolution of kernel W over
   [q; k; v] (no bias), SiLU; q and k L2-normalised per head, q scaled by 1/sqrt(K).
2. The forget gate, low rank K: ``g = -exp(A_log_h) · softplus(f_b_proj(f_a_proj(x)) + dt_bias)``, one
   log-decay per head AND channel (``[B, L, H, K]``): where GDN decays a head's state by one scalar,
   KDA decays each key channel's row of the state by its own factor (``diag(a_t) S``).
3. ``beta = sigmoid(b_proj(x))``, one per head; the rule (``variants/families/gdn/rule.py``).
4. The output gate, low rank K: ``g_b_proj(g_a_proj(x))``; a gated RMSNorm per head with a sigmoid
   gate and the weight kept in float32 (``KimiLinearRMSNormGated``); ``o_proj``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnbench.variants.cost import Cost, matmul_flops
from attnbench.variants.families.gdn.cost import delta_cost
from attnbench.variants.families.gdn.config import DeltaConfig
from attnbench.variants.families.gdn.layer import DeltaRuleLayer, GatedRMSNorm


@dataclass(frozen=True)
class KDAConfig(DeltaConfig):
    """Kimi Linear 48B-A3B: hidden 2304, 32 heads, K = 128, kernel 4 (key and value heads and dims equal)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.value_heads != self.key_heads:
            raise ValueError(f"value_heads={self.value_heads} is not allowed for kda: Kimi Delta Attention has as "
                             f"many value heads as key heads ({self.key_heads})")
        if self.v_dim != self.k_dim:
            raise ValueError(f"v_dim={self.v_dim} is not allowed for kda: keys and values share the head dim "
                             f"({self.k_dim})")


class ForgetGate(nn.Module):
    """Kimi Linear's per-channel log-decay (transformers' ``KimiLinearForgetGate``, the same names)."""

    def __init__(self, hidden: int, heads: int, dim: int) -> None:
        super().__init__()
        self.heads, self.dim = heads, dim
        self.f_a_proj = nn.Linear(hidden, dim, bias=False)
        self.f_b_proj = nn.Linear(dim, heads * dim, bias=False)
        # fla's KDA init: A in [1, 16]; dt in [1e-3, 1e-1] log-uniformly, dt_bias its softplus inverse.
        dt = torch.empty(heads * dim).uniform_(math.log(1e-3), math.log(1e-1)).exp()
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.empty(1, 1, heads, 1).uniform_(1, 16).log())

    def forward(self, x_BLD: Tensor) -> Tensor:
        B, L, _ = x_BLD.shape
        acc = torch.promote_types(x_BLD.dtype, torch.float32)
        logits = self.f_b_proj(self.f_a_proj(x_BLD)).to(acc) + self.dt_bias.to(acc)
        return -self.A_log.to(acc).exp() * F.softplus(logits.view(B, L, self.heads, self.dim))


class KDA(DeltaRuleLayer):
    """Kimi Delta Attention, parameters named as transformers names them."""

    def __init__(self, config: KDAConfig, *, variant: str = "kda") -> None:
        super().__init__()
        self._init_common(config, variant)
        D, H, K = config.hidden, config.key_heads, config.k_dim
        self.q_proj = nn.Linear(D, H * K, bias=False)
        self.k_proj = nn.Linear(D, H * K, bias=False)
        self.v_proj = nn.Linear(D, H * K, bias=False)
        self.forget_gate = ForgetGate(D, H, K)
        self.b_proj = nn.Linear(D, H, bias=False)
        self.g_a_proj = nn.Linear(D, K, bias=False)
        self.g_b_proj = nn.Linear(K, H * K, bias=False)
        self.o_norm = GatedRMSNorm(K, eps=config.norm_eps, activation="sigmoid", weight_in_float=True)
        self.o_proj = nn.Linear(H * K, D, bias=False)

    def _qkv_and_gates(self, x_BLD: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        qkv_BLC = torch.cat([self.q_proj(x_BLD), self.k_proj(x_BLD), self.v_proj(x_BLD)], dim=-1)
        return qkv_BLC, {"g": self.forget_gate(x_BLD), "beta": self.b_proj(x_BLD).sigmoid()}

    def _output(self, o_BLNV: Tensor, x_BLD: Tensor, extras: dict[str, Tensor]) -> Tensor:
        B, L = x_BLD.shape[:2]
        gate_BLHK = self.g_b_proj(self.g_a_proj(x_BLD)).view(o_BLNV.shape)
        return self.o_proj(self.o_norm(o_BLNV, gate_BLHK).reshape(B, L, -1))

    def cost(self, *, path: str, batch: int, q_len: int, cached: int, new_kv: int,
             dtype: torch.dtype | None = None, **options: Any) -> Cost:
        assert path in self.paths and not options
        return kda_cost(self.config, chunked=path == "chunked", batch=batch, q_len=q_len, cached=cached,
                        dtype=dtype or self.dtype)


def kda_projection_flops(config: DeltaConfig, *, batch: int, q_len: int) -> int:
    """q, k, v; the forget gate's and the output gate's low-rank pairs (rank K); beta; o."""
    D, H, K = config.hidden, config.key_heads, config.k_dim
    T = batch * q_len
    return (3 * matmul_flops(T, D, H * K) + 2 * (matmul_flops(T, D, K) + matmul_flops(T, K, H * K))
            + matmul_flops(T, D, H) + matmul_flops(T, H * K, D))


def kda_params(config: DeltaConfig) -> int:
    D, H, K, W = config.hidden, config.key_heads, config.k_dim, config.conv_kernel
    return (3 * D * H * K + config.conv_dim * W + 2 * (D * K + K * H * K) + H * K + H + D * H + K + H * K * D)


def kda_cost(config: DeltaConfig, *, chunked: bool, batch: int, q_len: int, cached: int, dtype: torch.dtype) -> Cost:
    return delta_cost(config, projection_flops=kda_projection_flops(config, batch=batch, q_len=q_len),
                      params=kda_params(config), chunked=chunked, batch=batch, q_len=q_len, cached=cached,
                      dtype=dtype, per_channel=True)
