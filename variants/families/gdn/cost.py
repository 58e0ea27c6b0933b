"""The cost of a delta-rule step, beside the math (``rule.py``, ``layer.py``): FLOPs, bytes, parameters.

Legend: B batch, L tokens of the step, D hidden, H key heads, N value heads, K key dim, V value dim,
C conv channels, W conv kernel, c chunk length (64), n = ceil(L / c) chunks.

FLOPs are the matrix products the code runs, as ``torch.utils.flop_counter.FlopCounterMode`` counts
them (a test checks equality); elementwise work (decay, gates, norms, the SiLU) is left out, and so is
the chunked form's triangular solve (``linalg.solve_triangular``, about c²·(K + V) per chunk and head),
which FlopCounterMode does not count.

- projections: the family's linear maps (GDN: ``in_proj_qkvz``, ``in_proj_ba``, ``out_proj``);
- short convolution: 2·B·L·C·W (depthwise);
- recurrent form, per token and value head: S^T k, the rank-1 write k·delta^T, S^T q: 3 x 2·K·V;
- chunked form, per chunk and value head: (K_beta K^T)·D and (Q K^T)·D: 2 x 2·c²·K; W S, Q S and the
  state write K^T V': 3 x 2·c·K·V; the intra-chunk attention times V': 2·c²·V. Padding to a multiple of
  c is counted (the code multiplies the padded chunk).

Bytes: every weight once; the whole state (recurrent state and conv window) read once and written
once, whatever the context (a prefill from position 0 starts from zeros: written only); activations
in and out. ``kv_bytes_per_token`` is 0: nothing grows with the context.
"""

from __future__ import annotations

import math
import torch

from attnbench.variants.cost import Cost, matmul_flops
from attnbench.variants.families.gdn.config import DeltaConfig
from attnbench.variants.families.gdn.rule import SUB
from attnbench.variants.families.gdn.state import StateLayout

CHUNK = 64


def layout_of(config: DeltaConfig) -> StateLayout:
    return StateLayout(heads=config.value_heads, k_dim=config.k_dim, v_dim=config.v_dim,
                       conv_dim=config.conv_dim, conv_kernel=config.conv_kernel)


def state_bytes_per_sequence(config: DeltaConfig, dtype: torch.dtype = torch.bfloat16) -> int:
    """Cache bytes one sequence holds in one layer at ANY context: the float32 recurrent state
    ``N·K·V·4`` plus the conv window ``C·(W-1)`` in ``dtype`` (the compute dtype)."""
    return layout_of(config).bytes_at(0, dtype)


def recurrent_state_bytes(config: DeltaConfig, dtype: torch.dtype = torch.bfloat16) -> int:
    """The recurrent state alone, ``N·K·V`` in float32 (2 MiB at Qwen3-Next's and Kimi Linear's shapes)."""
    return layout_of(config).state_bytes(dtype)


def rule_flops(config: DeltaConfig, *, chunked: bool, batch: int, q_len: int, per_channel: bool = False) -> int:
    """The delta rule's matmul FLOPs for a step of ``q_len`` tokens (``chunked`` with L > 1: chunked form).

    The two decayed products ((K_beta K^T)·D and (Q K^T)·D): per head one c x c x K matmul each; per
    channel the s x s blocks on and below the diagonal of sub-chunks (s = 16, m = c / s), m(m+1)/2
    blocks of 2·s²·K each."""
    N, K, V = config.value_heads, config.k_dim, config.v_dim
    if not chunked or q_len == 1:
        return batch * q_len * N * 3 * 2 * K * V
    n, c = math.ceil(q_len / CHUNK), CHUNK
    m = c // SUB
    decayed = 2 * SUB * SUB * K * m * (m + 1) // 2 if per_channel else 2 * c * c * K
    per_chunk = 2 * decayed + 3 * 2 * c * K * V + 2 * c * c * V
    return batch * N * n * per_chunk


def conv_flops(config: DeltaConfig, *, batch: int, q_len: int) -> int:
    return 2 * batch * q_len * config.conv_dim * config.conv_kernel


def delta_cost(config: DeltaConfig, *, projection_flops: int, params: int, chunked: bool, batch: int,
               q_len: int, cached: int, dtype: torch.dtype, per_channel: bool = False) -> Cost:
    """A step's cost given the family's projection FLOPs (for B·L tokens) and parameter count."""
    b = dtype.itemsize
    B, L, D = batch, q_len, config.hidden
    state = state_bytes_per_sequence(config, dtype)
    c, N, K, V = CHUNK, config.value_heads, config.k_dim, config.v_dim
    rows = L if not chunked or L == 1 else math.ceil(L / c) * c
    return Cost(
        flops=projection_flops + conv_flops(config, batch=B, q_len=L) + rule_flops(config, chunked=chunked,
                                                                                   batch=B, q_len=L,
                                                                                   per_channel=per_channel),
        weight_bytes=params * b,
        cache_read_bytes=B * state if cached else 0,  # the whole state, whatever the context
        cache_write_bytes=B * state,
        activation_bytes=2 * B * L * D * b,
        params=params,
        kv_bytes_per_token=0,
        score_elements=B * N * (rows * c if chunked and L > 1 else 0), qk_dim=K, v_dim=V,
        # the projections' outputs, the conv input and output, q/k/v in float32, the output
        transient_bytes=B * L * (2 * config.conv_dim + 2 * N * V) * b + B * rows * (config.conv_dim + N * V) * 4,
    )


def gdn_projection_flops(config: DeltaConfig, *, batch: int, q_len: int) -> int:
    D, H, N, K, V = config.hidden, config.key_heads, config.value_heads, config.k_dim, config.v_dim
    T = batch * q_len
    return matmul_flops(T, D, 2 * H * K + 2 * N * V) + matmul_flops(T, D, 2 * N) + matmul_flops(T, N * V, D)


def gdn_params(config: DeltaConfig) -> int:
    D, H, N, K, V, W = (config.hidden, config.key_heads, config.value_heads, config.k_dim, config.v_dim,
                        config.conv_kernel)
    return D * (2 * H * K + 2 * N * V) + D * 2 * N + config.conv_dim * W + 2 * N + V + N * V * D


def gdn_cost(config: DeltaConfig, *, chunked: bool, batch: int, q_len: int, cached: int, dtype: torch.dtype) -> Cost:
    return delta_cost(config, projection_flops=gdn_projection_flops(config, batch=batch, q_len=q_len),
                      params=gdn_params(config), chunked=chunked, batch=batch, q_len=q_len, cached=cached,
                      dtype=dtype)
