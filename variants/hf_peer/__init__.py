"""Which ``transformers`` attention module runs an attnbench layer: the map the ``hf`` implementation reads.

Legend: B batch, L new queries, T keys the module attends to, S cache rows, X per-head width.

A family registers one function per layer class, in a module of ``attnbench.variants.hf_peer.maps``
(discovered on the first lookup, as ``attnbench.variants.registry`` discovers implementations; nothing to
edit elsewhere)::

    @register(DSA)
    def deepseek_v32(layer: DSA) -> HFSpec | str:
        ...  # the transformers class, its config, the weight names; a string says why not

The function reads the layer's configuration only: it runs on meta-device layers, without
``transformers`` installed (``supports`` asks it), and returns data. ``attnbench.variants.hf_peer.runtime``
(imported when ``hf`` plans) builds the module from that data and runs it. Lookup is by the
layer's exact class: a subclass (a new family built on MLA) has no transformers module until it
registers its own, rather than silently running its parent's.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import torch

if TYPE_CHECKING:
    from torch import Tensor

    from attnbench.variants.cache import KVCache
    from attnbench.variants.layer import AttentionLayer, Step

Read = Literal["cache", "cache_then_new", "new"]


@dataclass(frozen=True)
class Slots:
    """Where one step's new entries go in the cache, and which keys the module gets back.

    ``read``: ``cache``, rows [0, T) after the write (a linear cache, or a ring's one-token step);
    ``cache_then_new``, the rows as they were before the step followed by the step's own entries
    (a multi-token step that wraps a ring: transformers' ``StaticSlidingWindowLayer`` concatenates
    the same way); ``new``, the step's entries alone (a prefill longer than the ring).
    """

    rows_P: Tensor  # cache row of each entry written
    kept_P: Tensor | None = None  # which of the step's L entries are written (None: all, in order)
    read: Read = "cache"


def linear_slots(step: Step) -> Slots:
    """A cache whose row p holds position p: the step's L entries go to rows [start, start + L)."""
    start, L = step.kv_start, step.x_BLD.shape[1]
    assert isinstance(start, int), "a ragged step has one start per sequence"
    return Slots(torch.arange(start, start + L, device=step.x_BLD.device))


@dataclass(frozen=True)
class HFSpec:
    """One layer as a transformers attention module: names and numbers, no transformers objects.

    ``modeling`` is the family's modeling module (``transformers.models.llama.modeling_llama``);
    ``attention`` and ``config`` are class names in it. The module is built with ``layer_idx=0``
    from ``config(**config_kwargs)``, takes the layer's parameters by ``weights`` (its parameter name
    -> the layer's, the inverse of ``attnbench.variants.hf``'s mapping), shared rather than copied, then gets
    ``attributes`` set (dotted names: ``"kv_a_layernorm.variance_epsilon"``). ``cache`` gives the
    key and value tensors transformers' cache layer holds for this module, ``[B, heads, S, X]``, as
    views of the attnbench cache (the module reads and writes the cache in place; nothing is
    converted or copied). ``attn_implementation`` None: ``sdpa`` when the family's pretrained
    class declares ``_supports_sdpa``, else ``eager``.
    """

    modeling: str
    attention: str
    config: str
    config_kwargs: Mapping[str, Any]
    weights: Mapping[str, str]
    cache: Callable[[KVCache], tuple[Tensor, Tensor]]
    attributes: Mapping[str, Any] = field(default_factory=dict)
    slots: Callable[[Step], Slots] = linear_slots
    window: int | None = None  # the sliding window transformers' mask builder is told (its local_size)
    attn_implementation: str | None = None
    # The step's transformers cache layer; None: ``runtime.FixedSlotLayer`` on ``cache``'s views at
    # ``slots``. A module that keeps more than keys and values (DSA's indexer keys, DeepSeek-V4's
    # compressor state) brings its own, on views of the attnbench cache's other fields.
    cache_layer: Callable[[Step], Any] | None = None


Mapper = Callable[["AttentionLayer"], "HFSpec | str"]
LayerT = TypeVar("LayerT")
_MAPS: dict[type, Mapper] = {}
_discovered = False


def register(layer_class: type) -> Callable[[Callable[[LayerT], HFSpec | str]], Callable[[LayerT], HFSpec | str]]:
    """Register the function mapping layers of exactly ``layer_class`` to a transformers module."""

    def decorate(fn: Callable[[LayerT], HFSpec | str]) -> Callable[[LayerT], HFSpec | str]:
        existing = _MAPS.get(layer_class)
        if existing is not None and existing is not fn:
            raise ValueError(f"a transformers module for {layer_class.__name__} layers is registered twice")
        _MAPS[layer_class] = fn  # type: ignore[assignment]
        return fn

    return decorate


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    maps = importlib.import_module("attnbench.variants.hf_peer.maps")
    for info in pkgutil.iter_modules(maps.__path__):
        importlib.import_module(f"attnbench.variants.hf_peer.maps.{info.name}")


def spec_for(layer: AttentionLayer) -> HFSpec | str:
    """The transformers module for ``layer``, or the reason there is none."""
    _discover()
    mapper = _MAPS.get(type(layer))
    if mapper is None:
        known = ", ".join(sorted(cls.__name__ for cls in _MAPS))
        return (f"hf has no transformers module for {type(layer).__name__} layers ({layer.variant}); "
                f"mapped: {known} (register one in variants/hf_peer/maps/)")
    return mapper(layer)


def weight_names(names: Mapping[str, str], layer: AttentionLayer) -> dict[str, str]:
    """``{transformers parameter name: the layer's}`` from a by-module mapping (``attnbench.variants.hf``'s
    ``{transformers module: attnbench module}``), for the modules the layer has."""
    out = {}
    for hf_module, ours in names.items():
        module = getattr(layer, ours, None)
        if module is None:
            continue
        for param, _ in module.named_parameters():
            out[f"{hf_module}.{param}"] = f"{ours}.{param}"
    return out
