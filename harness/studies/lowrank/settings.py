"""What one low-rank study runs: model, methods, the d_c and d_r sweeps, texts, where it computes.

Plain data, validated here and nowhere else; ``conf/experiment/lowrank_smollm2.yaml`` holds the
same keys under ``lowrank:``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from attnbench.harness.measure.case import DTYPES
from attnbench.variants.convert.partial_rope import PAIR_STRATEGIES
from attnbench.variants.shape import check_choice, check_keys, check_positive, field_names

MAX_TOKENS = 1 << 20  # tokens of one text or window: far above the study's texts, below an int overflow
MAX_DIM = 1 << 16  # d_c, d_r: far above any model's head dims


@dataclass(frozen=True)
class StudySettings:
    model: str = "smollm2_135m"  # a preset in conf/model with a `weights:` loader
    methods: tuple[str, ...] = ("svd", "rsvd", "qr", "cur", "whitened")
    d_c: tuple[int, ...] = (32, 64, 128, 256)  # latent sizes; above a source's rank: a skipped row
    d_r: tuple[int, ...] = (32,)  # rotary dims per head, even
    rope_pairs: str = "auto"  # variants.convert.partial_rope: auto = norm with calibration data
    calib_tokens: int = 1024  # from the text's midpoint (harness.studies.lowrank.text)
    eval_tokens: int = 2048  # perplexity text: the text's first tokens
    act_tokens: int = 512  # held-out activations for act_rel_err: the first tokens of the eval text
    window: int = 512  # perplexity context window
    impl: str = "sdpa"  # attnbench implementation for outputs and perplexity
    dtype: str = "float32"  # the model and the layers compute in this
    kv_dtype: str = "bfloat16"  # KV bytes are counted in this (as a deployment would cache)
    layers: tuple[int, ...] | None = None  # None: every decoder layer; perplexity converts these only
    latency_context: int = 1024  # cached tokens for the decode timing; 0: no latency rows
    latency_impls: tuple[str, ...] = ("eager", "absorbed")  # converted layer
    source_latency_impls: tuple[str, ...] = ("eager", "sdpa")  # source GQA layer

    def __post_init__(self) -> None:
        for name in ("calib_tokens", "eval_tokens", "act_tokens", "window"):
            check_positive(name, getattr(self, name))
            _check_at_most(name, getattr(self, name), MAX_TOKENS)
        if isinstance(self.latency_context, bool) or not isinstance(self.latency_context, int) \
                or not 0 <= self.latency_context <= MAX_TOKENS:
            raise ValueError(f"latency_context={self.latency_context!r} is not allowed: 0 (off) or a positive "
                             f"integer up to {MAX_TOKENS}")
        if self.act_tokens > self.eval_tokens:
            raise ValueError(f"act_tokens={self.act_tokens} exceeds eval_tokens={self.eval_tokens}; "
                             "the held-out activations come from the evaluation text")
        for name in ("methods", "d_c", "d_r"):
            if not getattr(self, name):
                raise ValueError(f"{name} is empty; list at least one")
        for value in self.d_c:
            check_positive("d_c", value)
            _check_at_most("d_c", value, MAX_DIM)
        for value in self.d_r:
            check_positive("d_r", value)
            _check_at_most("d_r", value, MAX_DIM)
            if value % 2:
                raise ValueError(f"d_r={value} is odd; allowed: even values (rotary dims come in pairs)")
        from attnbench.variants.convert.method import METHODS
        from attnbench.variants.registry import IMPLEMENTATIONS

        for method in self.methods:
            METHODS.get(method)  # the registry's one line: unknown low-rank method ...; valid: ...
        for name in ("impl", "latency_impls", "source_latency_impls"):
            values = getattr(self, name)
            for value in (values,) if name == "impl" else values:
                check_choice(name, value, tuple(IMPLEMENTATIONS.names()))
        if self.layers is not None:
            if not self.layers:
                raise ValueError("layers is empty; list at least one layer index, or null for every layer")
            for value in self.layers:
                if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_DIM:
                    raise ValueError(f"layers={value!r} is not allowed: layer indices are integers from 0")
        check_choice("rope_pairs", self.rope_pairs, PAIR_STRATEGIES)
        check_choice("dtype", self.dtype, tuple(DTYPES))
        check_choice("kv_dtype", self.kv_dtype, tuple(DTYPES))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> StudySettings:
        """From a config mapping (lists become tuples); unknown keys fail with the valid ones."""
        check_keys("lowrank setting", values, field_names(cls))
        lists = {"methods", "d_c", "d_r", "layers", "latency_impls", "source_latency_impls"}
        # A list key given one value (d_c=64) is a list of one; a list in a scalar key is refused by its check.
        return cls(**{k: tuple(v) if isinstance(v, (list, tuple)) else (v,) if k in lists and v is not None else v
                      for k, v in values.items()})

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


def _check_at_most(name: str, value: int, limit: int) -> None:
    if value > limit:
        raise ValueError(f"{name}={value} is not allowed: at most {limit}")


def check_model(model: str, layers: tuple[int, ...] | list[int] | None) -> None:
    """The preset must have trained weights to convert (a ``weights:`` loader), and ``layers`` must be
    among its layers: checked before the weights are read, as a one-line ``UserError``."""
    import yaml

    from attnbench.harness.errors import UserError
    from attnbench.harness.studies.lowrank.model import WEIGHTS
    from attnbench.variants.presets import conf_root, preset_names

    presets = {name: yaml.safe_load((conf_root() / "model" / f"{name}.yaml").read_text()) or {}
               for name in preset_names()}
    with_weights = sorted(name for name, preset in presets.items() if preset.get("weights") in WEIGHTS)
    if model not in with_weights:
        raise UserError(f"model={model!r} has no trained weights to convert (no `weights:` loader in its "
                        f"preset); allowed: {', '.join(with_weights)}")
    num_layers = presets[model].get("num_layers")
    for layer in layers or ():
        if isinstance(num_layers, int) and isinstance(layer, int) and layer >= num_layers:
            raise UserError(f"layers={layer} is not allowed: {model} has {num_layers} layers (0 to {num_layers - 1})")
