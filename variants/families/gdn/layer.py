"""Gated DeltaNet as Qwen3-Next defines it, on a base every delta-rule layer shares (kda builds on it).

Legend: B batch, L tokens of the step, D hidden, H key heads, N value heads (N % H == 0), K key dim,
V value dim, C conv channels (2·H·K + N·V for GDN), W conv kernel.

One step (transformers' ``Qwen3NextGatedDeltaNet``, Qwen3-Next config.json; the GDN paper, Yang et
al. 2024):
1. ``in_proj_qkvz`` gives q, k (H·K each), v and the output gate z (N·V each), grouped per key head
   as Qwen3-Next lays them out; ``in_proj_ba`` gives beta's and the decay's logits (N each).
2. A depthwise causal convolution of kernel W over [q; k; v] (no bias), then SiLU; its last W-1
   inputs are the conv state.
3. q and k L2-normalised per head (eps 1e-6 inside the root, fla's ``l2norm``), q scaled by 1/sqrt(K).
4. beta = sigmoid(b), log-decay g = -exp(A_log) · softplus(a + dt_bias), one per value head.
5. The gated delta rule (``rule.py``); value head n reads key head n // (N / H).
6. A gated RMSNorm per value head, ``norm(o) · silu(z)``, then ``out_proj``.

There is no positional encoding: the convolution and the decay carry order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnbench.variants.cost import Cost
from attnbench.variants.families.gdn import cost as costs
from attnbench.variants.families.gdn.config import DeltaConfig, GDNConfig
from attnbench.variants.families.gdn.rule import CHUNKED, RECURRENT, DeltaRuleKernel, is_delta_rule_kernel
from attnbench.variants.families.gdn.state import StateCache, StateLayout
from attnbench.variants.kernel import Kernel
from attnbench.variants.layer import PHASES, AttentionLayer, Step, StepRunner
from attnbench.variants.mask import AttnMask
from attnbench.variants.registry import implementation as resolve
from attnbench.variants.registry import path_unsupported
from attnbench.variants.shape import check_choice

if TYPE_CHECKING:
    from attnbench.variants.implementation import Implementation
    from attnbench.variants.layer import Phase

# The implementation the harness's numerics gate runs as its float64 reference is named ``eager``; on a
# delta-rule layer its dataflow is the recurrent form (the readable baseline).
REFERENCE_KERNEL = "eager"


def l2norm(x: Tensor, eps: float = 1e-6) -> Tensor:
    """fla's ``l2norm``: ``x / sqrt(sum(x²) + eps)`` over the last dim (transformers copies it)."""
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + eps)


class DeltaRuleLayer(AttentionLayer):
    """What GDN and KDA share: the state cache, the short convolution, the step, the kernel choice.

    A subclass supplies ``_qkv_and_gates(x)`` (the pre-conv [q; k; v] and the gates) and
    ``_output(o, x, extras)`` (gated norm and output projection), and the cost of its projections."""

    paths = ("standard", "chunked")  # standard: the recurrent form (eager); chunked: chunked prefill
    attention = "self"
    config: DeltaConfig

    def _init_common(self, config: DeltaConfig, variant: str) -> None:
        self.config = config
        self.variant = variant
        self.hidden = config.hidden
        C, W = config.conv_dim, config.conv_kernel
        # Depthwise, no bias (both models); weight [C, 1, W] as nn.Conv1d holds it.
        self.conv1d = nn.Conv1d(C, C, W, groups=C, bias=False, padding=W - 1)
        self.scale = config.k_dim ** -0.5

    # -- the cache ---------------------------------------------------------------------------------
    def cache_layout(self, path: str) -> StateLayout:
        assert path in self.paths
        c = self.config
        return StateLayout(heads=c.value_heads, k_dim=c.k_dim, v_dim=c.v_dim, conv_dim=c.conv_dim,
                           conv_kernel=c.conv_kernel)

    def state_bytes(self, dtype: torch.dtype | None = None) -> int:
        """Cache bytes per sequence of this layer at any context (state + conv window)."""
        return self.cache_layout("standard").bytes_at(0, dtype or self.dtype)

    def new_cache(self, batch: int, max_len: int | Sequence[int], *, impl: str | Implementation = "eager",
                  page_size: int | None = None) -> StateCache:  # type: ignore[override]
        implementation = resolve(impl)
        reason = path_unsupported(implementation.name, implementation.path, variant=self.variant, paths=self.paths)
        if reason is None:
            reason = self.kernel_unsupported(implementation.kernel)
        if reason is not None:
            raise ValueError(reason)
        return StateCache(self.cache_layout(implementation.path), batch=batch, max_len=max_len, dtype=self.dtype,
                          device=self.device, page_size=page_size)

    def prepare(self, phase: Phase, x_BLD: Tensor, cache: StateCache, *,  # type: ignore[override]
                impl: str | Implementation = "eager", compile: str | None = None,
                memory_BMD: Tensor | None = None) -> Callable[[], Tensor]:
        """A closure repeating one step at the cache's length: a decode step reads the state and writes the
        next one into twin buffers (``StateCache.repeatable``), so every call moves the same bytes as
        an in-place step and returns the same output; a prefill starts from zeros every call."""
        target = cache.repeatable() if phase == "decode" else cache
        plan = self.plan(impl, compile=compile)
        return plan.bind(phase, x_BLD, target, memory_BMD=memory_BMD)  # type: ignore[arg-type]

    # -- the kernel --------------------------------------------------------------------------------
    def kernel_unsupported(self, kernel: Kernel) -> str | None:
        if is_delta_rule_kernel(kernel) or kernel.name == REFERENCE_KERNEL:
            return None
        return (f"{self.variant} mixes tokens with the gated delta rule; the {kernel.name} kernel computes softmax "
                f"attention (implementations that run {self.variant}: eager, chunked)")

    def delta_rule(self, path: str, kernel: Kernel) -> DeltaRuleKernel:
        """The delta-rule kernel a path runs: the implementation's own when it is one (fla plugs in
        here), else the family's form of the path (standard: recurrent, chunked: chunked)."""
        if is_delta_rule_kernel(kernel):
            return kernel  # type: ignore[return-value]
        return RECURRENT if path == "standard" else CHUNKED

    def step_runner(self, path: str, kernel: Kernel, **options: Any) -> StepRunner:
        assert path in self.paths and not options
        reason = self.kernel_unsupported(kernel)
        if reason is not None:
            raise ValueError(reason)
        rule = self.delta_rule(path, kernel)
        return lambda step: self._step(step, rule)

    # -- the step ----------------------------------------------------------------------------------
    def _make_step(self, phase: Phase, x_BLD: Tensor, cache: StateCache,  # type: ignore[override]
                   memory_BMD: Tensor | None, kernel: Kernel) -> Step:
        check_choice("phase", phase, PHASES)
        if memory_BMD is not None:
            raise ValueError("memory_BMD is for cross-attention; a linear-attention layer is self-attention")
        if x_BLD.dim() != 3 or x_BLD.shape[-1] != self.hidden or x_BLD.shape[0] != cache.batch:
            raise ValueError(f"x has shape {tuple(x_BLD.shape)}; expected [batch={cache.batch}, L, "
                             f"hidden={self.hidden}]")
        if x_BLD.dtype != self.dtype:
            raise ValueError(f"x has dtype {x_BLD.dtype} but the layer holds {self.dtype}")
        L = x_BLD.shape[1]
        if L < 1:
            raise ValueError("a step needs at least one token")
        start = 0 if phase == "prefill" else cache.length
        if start + L > cache.max_len:
            raise ValueError(f"{phase} of {L} tokens after {start} exceeds the cache's max_len={cache.max_len}")
        # The rule needs no mask: causality is the recurrence. The record says which tokens the step sees.
        mask = AttnMask(L, start + L, start, None, all_visible=L == 1)
        return Step(phase, x_BLD, cache, start, x_BLD, start, start + L, mask)  # type: ignore[arg-type]

    def _step(self, step: Step, rule: DeltaRuleKernel) -> Tensor:
        cache: StateCache = step.cache  # type: ignore[assignment]
        x_BLD = step.x_BLD
        if step.phase == "prefill":
            cache.reset_()  # a prefill starts a sequence: zero state, zero conv window
        qkv_BLC, extras = self._qkv_and_gates(x_BLD)
        q_BLHK, k_BLHK, v_BLNV = self._conv_split(qkv_BLC, cache.conv, cache.conv_out)
        acc = cache.state.dtype
        # L2-normalised in the state's dtype, as fla and transformers do inside their kernels.
        q_BLHK, k_BLHK = l2norm(q_BLHK.to(acc)), l2norm(k_BLHK.to(acc))
        o_BLNV = rule(q_BLHK, k_BLHK, v_BLNV, extras["g"], extras["beta"], cache.state, scale=self.scale,
                      state_out=cache.state_out)
        return self._output(o_BLNV.to(x_BLD.dtype), x_BLD, extras)

    def _conv_split(self, qkv_BLC: Tensor, conv_BCW: Tensor, conv_out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The causal depthwise convolution over the step's inputs after the W-1 in ``conv_BCW`` (zeros at
        a prefill), SiLU, the new window written to ``conv_out`` (``conv_BCW`` itself: in place); split into
        q, k ``[B, L, H, K]`` and v ``[B, L, N, V]``."""
        c = self.config
        B, L, _ = qkv_BLC.shape
        full_BCT = torch.cat([conv_BCW, qkv_BLC.transpose(1, 2)], dim=-1)
        conv_out.copy_(full_BCT[..., -(c.conv_kernel - 1):])
        mixed_BCL = F.silu(F.conv1d(full_BCT, self.conv1d.weight, groups=c.conv_dim))
        mixed_BLC = mixed_BCL.transpose(1, 2)
        HK = c.key_heads * c.k_dim
        q, k, v = torch.split(mixed_BLC, [HK, HK, c.value_heads * c.v_dim], dim=-1)
        return (q.reshape(B, L, c.key_heads, c.k_dim), k.reshape(B, L, c.key_heads, c.k_dim),
                v.reshape(B, L, c.value_heads, c.v_dim))

    # -- hooks a delta-rule family implements ------------------------------------------------------
    def _qkv_and_gates(self, x_BLD: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def _output(self, o_BLNV: Tensor, x_BLD: Tensor, extras: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError


class GatedRMSNorm(nn.Module):
    """RMSNorm over V, then times the gate's activation (silu for Qwen3-Next, sigmoid for Kimi Linear).

    Qwen3-Next scales by the weight in the input dtype; Kimi Linear keeps the weight in float32
    (``Qwen3NextRMSNormGated``, ``KimiLinearRMSNormGated``): ``weight_in_float`` says which."""

    def __init__(self, dim: int, *, eps: float, activation: str, weight_in_float: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.activation = F.silu if activation == "silu" else torch.sigmoid
        self.weight_in_float = weight_in_float

    def forward(self, x: Tensor, gate: Tensor) -> Tensor:
        dtype = x.dtype
        h = x.float() if dtype != torch.float64 else x
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        h = self.weight.to(h.dtype) * h if self.weight_in_float else self.weight * h.to(dtype)
        return (h * self.activation(gate.to(h.dtype))).to(dtype)


class GDN(DeltaRuleLayer):
    """Gated DeltaNet (per-head scalar decay), parameters named as transformers names them."""

    def __init__(self, config: GDNConfig, *, variant: str = "gdn") -> None:
        super().__init__()
        self._init_common(config, variant)
        c = config
        D, H, N, K, V = c.hidden, c.key_heads, c.value_heads, c.k_dim, c.v_dim
        self.in_proj_qkvz = nn.Linear(D, 2 * H * K + 2 * N * V, bias=False)
        self.in_proj_ba = nn.Linear(D, 2 * N, bias=False)
        # Qwen3-Next's init: dt_bias ones, A uniform in [0.01, 16] (log kept away from -inf).
        self.dt_bias = nn.Parameter(torch.ones(N))
        self.A_log = nn.Parameter(torch.empty(N).uniform_(0.01, 16).log())
        self.norm = GatedRMSNorm(V, eps=c.norm_eps, activation="silu", weight_in_float=False)
        self.out_proj = nn.Linear(N * V, D, bias=False)

    def _qkv_and_gates(self, x_BLD: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        c = self.config
        B, L, _ = x_BLD.shape
        H, K, V, G = c.key_heads, c.k_dim, c.v_dim, c.value_heads // c.key_heads
        # Qwen3-Next groups the projection per key head: [q K, k K, v G·V, z G·V] for each of the H heads.
        qkvz_BLHX = self.in_proj_qkvz(x_BLD).view(B, L, H, 2 * K + 2 * G * V)
        q, k, v, z = torch.split(qkvz_BLHX, [K, K, G * V, G * V], dim=-1)
        ba_BLHX = self.in_proj_ba(x_BLD).view(B, L, H, 2 * G)
        b_BLN, a_BLN = (t.reshape(B, L, H * G) for t in torch.split(ba_BLHX, [G, G], dim=-1))
        qkv_BLC = torch.cat([q.reshape(B, L, H * K), k.reshape(B, L, H * K), v.reshape(B, L, H * G * V)], dim=-1)
        acc = torch.promote_types(x_BLD.dtype, torch.float32)
        g_BLN = -self.A_log.to(acc).exp() * F.softplus(a_BLN.to(acc) + self.dt_bias.to(acc))
        return qkv_BLC, {"g": g_BLN, "beta": b_BLN.sigmoid(), "z": z.reshape(B, L, H * G, V)}

    def _output(self, o_BLNV: Tensor, x_BLD: Tensor, extras: dict[str, Tensor]) -> Tensor:
        B, L = x_BLD.shape[:2]
        return self.out_proj(self.norm(o_BLNV, extras["z"]).reshape(B, L, -1))

    def cost(self, *, path: str, batch: int, q_len: int, cached: int, new_kv: int,
             dtype: torch.dtype | None = None, **options: Any) -> Cost:
        assert path in self.paths and not options
        return costs.gdn_cost(self.config, chunked=path == "chunked", batch=batch, q_len=q_len, cached=cached,
                              dtype=dtype or self.dtype)
