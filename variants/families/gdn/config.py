"""The dims every delta-rule layer has (``DeltaConfig``) and Gated DeltaNet's (``GDNConfig``).

Legend: D hidden, H key heads, N value heads (N % H == 0), K key dim, V value dim, C conv channels, W conv kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

from attnbench.variants.shape import check_positive


@dataclass(frozen=True)
class DeltaConfig:
    """Dims every delta-rule layer has."""

    hidden: int  # D
    key_heads: int  # H
    value_heads: int  # N, a multiple of H
    k_dim: int  # K
    v_dim: int  # V
    conv_kernel: int = 4  # W (Qwen3-Next linear_conv_kernel_dim, Kimi Linear short_conv_kernel_size)
    norm_eps: float = 1e-6  # the gated RMSNorm's epsilon (rms_norm_eps of both configs)
    kv_dtype: str = "auto"  # only auto: the state stays float32

    def __post_init__(self) -> None:
        for name in ("hidden", "key_heads", "value_heads", "k_dim", "v_dim", "conv_kernel"):
            check_positive(name, getattr(self, name))
        if self.value_heads % self.key_heads:
            raise ValueError(f"value_heads={self.value_heads} is not a multiple of key_heads={self.key_heads}; "
                             f"valid value_heads: multiples of {self.key_heads}")
        if self.conv_kernel < 2:
            raise ValueError(f"conv_kernel={self.conv_kernel} is not allowed: it must be at least 2")
        if self.kv_dtype != "auto":
            raise ValueError(f"kv_dtype={self.kv_dtype!r} is not supported by a linear-attention layer (its state "
                             "is kept in float32 as Qwen3-Next and Kimi Linear keep it); valid: auto")

    @property
    def conv_dim(self) -> int:
        """C: the channels the short convolution mixes, [q; k; v]."""
        return 2 * self.key_heads * self.k_dim + self.value_heads * self.v_dim


@dataclass(frozen=True)
class GDNConfig(DeltaConfig):
    """Qwen3-Next-80B-A3B: hidden 2048, 16 key heads, 32 value heads, K = V = 128, kernel 4."""
