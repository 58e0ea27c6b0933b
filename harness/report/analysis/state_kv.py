"""State against KV (issue 21): one sequence's attention memory in a whole model, by its layer schedule.

A hybrid keeps a fixed-size state in its linear layers (Gated DeltaNet, KDA: the float32 recurrent
state ``N·K·V`` and the short convolution's window) and a growing KV cache in its few full layers;
every other model's cache grows in every layer (or stops at a ring: gpt-oss's window layers). The
bytes are the cost model's (``attnbench.harness.report.analysis.costmodel``, each layer's own cache layout asked for its
bytes at the context), never ``tokens x bytes per token`` assumed here.

``models()`` are the seven models (``state_kv_models.yaml``) the ``state_vs_kv`` experiment compares, each with the variant that
holds its whole schedule (``VariantSpec.layer_for_kind``: gdn's full layers are Qwen3-Next's gated GQA,
kda's are Kimi Linear's NoPE MLA) and, per layer kind, the variant and implementation whose one
decode step the experiment times.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources

import torch
import yaml

from attnbench.harness.report.analysis.costmodel import model_cost
from attnbench.variants.presets import load_preset
from attnbench.variants.registry import VARIANTS
from attnbench.variants.shape import ModelShape


@dataclass(frozen=True)
class HybridModel:
    label: str  # as figures and tables name it
    preset: str  # conf/model/<preset>.yaml
    variant: str  # the variant whose schedule is the whole model
    # Per letter of the schedule (``ModelShape.layer_kinds``) the variant and implementation of that layer
    # kind's decode step; a model without a schedule has one entry, "F".
    kinds: Mapping[str, tuple[str, str]] = field(default_factory=dict)

    def shape(self) -> ModelShape:
        return load_preset(self.preset)


@functools.cache
def models() -> tuple[HybridModel, ...]:
    """The models of ``state_kv_models.yaml`` (data, not code: which variant stands for which design)."""
    rows = yaml.safe_load(resources.files(__package__).joinpath("state_kv_models.yaml").read_text())
    return tuple(HybridModel(row["label"], row["preset"], row["variant"],
                             {kind: (pair[0], pair[1]) for kind, pair in row["kinds"].items()}) for row in rows)


# Contexts the experiment measures on a CPU, and those the cost model extends the memory curve to.
MEASURED_CONTEXTS: tuple[int, ...] = (1024, 4096, 32768, 131072)
MODEL_CONTEXTS: tuple[int, ...] = (1024, 4096, 32768, 131072, 262144, 524288, 1048576)


def available(model: HybridModel) -> str | None:
    """None when every variant ``model`` needs is registered, else why not (one line)."""
    missing = sorted({model.variant, *(v for v, _ in model.kinds.values())} - set(VARIANTS.names()))
    return f"{model.label}: variant {', '.join(missing)} is not registered" if missing else None


def model_bytes(model: HybridModel, context: int, dtype: str = "bfloat16") -> int:
    """One sequence's cache (KV and state) over all the model's layers at ``context`` tokens."""
    return model_cost(model.variant, model.shape(), dtype).kv_bytes_model_at(context)


def layer_bytes(model: HybridModel, kind: str, context: int, dtype: torch.dtype = torch.bfloat16) -> int:
    """One sequence's cache in one layer of ``kind`` (a letter of the schedule) at ``context`` tokens."""
    shape = model.shape()
    spec = VARIANTS.get(model.variant)
    with torch.device("meta"):
        layer = spec.layer_for_kind(shape, kind, "self") if spec.layer_for_kind else spec.make(shape, "self")
    return layer.cache_layout("standard").bytes_at(context, dtype)


def crossover_tokens(model: HybridModel, dtype: torch.dtype = torch.bfloat16) -> float:
    """Where one linear layer's fixed state equals one full layer's KV: the context at which the full
    layer's cache reaches the linear layer's recurrent state (the float32 ``N·K·V``; the conv window,
    a few tens of KiB, is left out, as the issue's 1,024 and ~1,820 do)."""
    shape = model.shape()
    spec = VARIANTS.get(model.variant)
    assert spec.layer_for_kind is not None, f"{model.label} has no linear layers"
    with torch.device("meta"):
        linear = spec.layer_for_kind(shape, "L", "self")
        full = spec.layer_for_kind(shape, "F", "self")
    state = linear.cache_layout("standard").state_bytes(dtype)
    return state / full.cache_layout("standard").bytes_per_token(dtype)


def memory_table(contexts: tuple[int, ...] = (4096, 32768, 131072, 1048576),
                 dtype: str = "bfloat16") -> list[tuple[str, list[int | None]]]:
    """Per model, its whole-model bytes per sequence at each context (None: a variant it needs is missing)."""
    return [(m.label, [None if available(m) else model_bytes(m, c, dtype) for c in contexts]) for m in models()]
