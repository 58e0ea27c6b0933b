"""The ``hf`` implementation's runtime: transformers' attention module built from an ``HFSpec``, one
step bound to it. Imported when ``hf`` plans, never when ``variants`` is imported (transformers is
an optional extra).

Legend: B batch, L new queries, T keys the module attends to, S cache rows, X per-head width,
K heads of transformers' cache layer.

The cache. transformers 5.23's caches either write in place at their own counter
(``StaticLayer.update``: ``cumulative_length``, advanced by every call; ``StaticSlidingWindowLayer``
also rolls its whole window once full) or concatenate (``DynamicLayer``: a new tensor per step).
None repeats a step at one context length, which the harness's timer does. The module gets a
``FixedSlotLayer`` instead: a transformers cache layer whose buffers are views of the attnbench
cache (transformers' layout ``[B, K, S, X]``) and whose update writes the step's rows in place
with ``index_copy_``, as ``StaticLayer`` does, at rows fixed at bind. The cached context the
module reads is the attnbench cache itself (no conversion, no copy), and what it writes lands
there. It returns the rows ``[0, T)`` the step sees, as ``DynamicLayer`` does (not
``StaticLayer``'s whole buffer, whose unwritten rows only a mask would hide: the step's work
follows the context, not the capacity), and the mask follows the rules for that cache, the one
``generate()`` uses by default.

The rest is what a transformers decoder layer hands its attention module: ``position_embeddings``
from the family's rotary class (with the layer's own frequencies and attention factor), the mask
from transformers' mask builder for the attention implementation (``sdpa_mask`` or
``eager_mask``, taking the ``is_causal``/no-mask shortcut where transformers does), and
``position_ids``. All of it is made in ``bind``; the closure only calls the module.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers.cache_utils import Cache, CacheLayerMixin
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

from attnbench.variants.hf_peer import HFSpec, Slots
from attnbench.variants.layer import AttentionLayer, Step


class FixedSlotLayer(CacheLayerMixin):
    """A transformers cache layer on views of an attnbench cache that writes one step's fixed rows.

    It writes in place with ``index_copy_``, as ``StaticLayer`` does, and returns the rows seen so far,
    as ``DynamicLayer`` does: the cache generate() uses by default, whose mask rules ``build_mask`` follows.
    """

    is_compileable = False
    is_sliding = False

    def __init__(self, keys_BKSX: Tensor, values_BKSX: Tensor, *, slots: Slots, start: int, kv_len: int) -> None:
        super().__init__()
        self.keys, self.values = keys_BKSX, values_BKSX
        self.dtype, self.device = keys_BKSX.dtype, keys_BKSX.device
        self.is_initialized = True
        self.slots = slots
        self.start = start
        self.kv_len = kv_len

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        raise AssertionError("a FixedSlotLayer is made on its buffers")

    def get_seq_length(self) -> int:
        return self.start

    def get_max_length(self) -> int:
        return self.keys.shape[2]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.kv_len, 0

    def update(self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        slots = self.slots
        k_new, v_new = key_states, value_states
        if slots.kept_P is not None:
            k_new, v_new = key_states.index_select(2, slots.kept_P), value_states.index_select(2, slots.kept_P)
        if slots.read == "cache_then_new":  # the ring as it was, then the step's entries (a copy, as transformers')
            keys, values = torch.cat([self.keys, key_states], dim=2), torch.cat([self.values, value_states], dim=2)
        self.keys.index_copy_(2, slots.rows_P, k_new)
        self.values.index_copy_(2, slots.rows_P, v_new)
        if slots.read == "cache":
            return self.keys[:, :, :self.kv_len], self.values[:, :, :self.kv_len]
        if slots.read == "new":
            return key_states, value_states
        return keys, values


def _family_class(modeling: Any, suffix: str) -> type:
    found = [obj for name, obj in vars(modeling).items() if name.endswith(suffix) and isinstance(obj, type)
             and obj.__module__ == modeling.__name__]
    assert len(found) == 1, f"expected one *{suffix} class in {modeling.__name__}, found {len(found)}"
    return found[0]


def attn_implementation(spec: HFSpec) -> str:
    """``sdpa`` where the family's pretrained class declares it (``_supports_sdpa``), else ``eager``
    (gpt-oss: transformers' sdpa path would drop its sinks)."""
    if spec.attn_implementation is not None:
        return spec.attn_implementation
    modeling = importlib.import_module(spec.modeling)
    return "sdpa" if getattr(_family_class(modeling, "PreTrainedModel"), "_supports_sdpa", False) else "eager"


def _set(module: nn.Module, dotted: str, value: Any) -> None:
    owner, _, name = dotted.rpartition(".")
    setattr(module.get_submodule(owner) if owner else module, name, value)


def build_module(layer: AttentionLayer, spec: HFSpec) -> tuple[nn.Module, nn.Module]:
    """The transformers attention module holding ``layer``'s parameters (shared, not copied) and the
    family's rotary module with the layer's frequencies."""
    modeling = importlib.import_module(spec.modeling)
    config = getattr(modeling, spec.config)(**spec.config_kwargs)
    config._attn_implementation = attn_implementation(spec)
    with torch.device("meta"):  # no weights of its own: it takes the layer's below
        module = getattr(modeling, spec.attention)(config, layer_idx=0)
    params = dict(layer.named_parameters())
    module.load_state_dict({hf: params[ours] for hf, ours in spec.weights.items()}, strict=True, assign=True)
    for name, value in spec.attributes.items():
        _set(module, name, value)
    module.eval()
    rope = getattr(layer, "rope", None)
    assert rope is not None and rope.groups is None, "the maps refuse layers without one set of RoPE frequencies"
    with torch.device(layer.device):
        rotary = _family_class(modeling, "RotaryEmbedding")(config)
    rotary.inv_freq = rope.inv_freq.to(layer.device)
    rotary.attention_scaling = rope.scaling
    return module, rotary


def build_mask(layer: AttentionLayer, step: Step, *, implementation: str, window: int | None) -> Tensor | None:
    """transformers' mask for the step from its mask builder for ``implementation``: the layer's mask
    function (``layer.mask_fn()``) of the position each key row holds (a ring's rows hold other
    positions than their index; -1: never written)."""
    mask = step.mask
    B, L = step.x_BLD.shape[:2]
    device = step.x_BLD.device
    pos_T = mask.kv_pos_T if mask.kv_pos_T is not None else torch.arange(mask.kv_len, device=device)
    fn = layer.mask_fn()

    def mask_function(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        position = pos_T[kv]
        return fn(b, h, q, position) & (position >= 0)

    # As create_causal_mask for a DynamicCache with no padding: the builder skips the mask where SDPA's
    # is_causal (or no mask at all) does the same, and never past a window (local_size).
    return ALL_MASK_ATTENTION_FUNCTIONS[implementation](
        batch_size=B, q_length=L, kv_length=mask.kv_len, q_offset=step.q_start, kv_offset=0,
        mask_function=mask_function, local_size=window, allow_is_causal_skip=True, dtype=step.x_BLD.dtype,
        device=device)


@dataclass
class HFPlan:
    """transformers' module built once on a layer; ``bind`` makes one step's cache layer, mask and rotary
    embeddings, and returns the closure that calls the module."""

    layer: AttentionLayer
    spec: HFSpec
    module: nn.Module
    rotary: nn.Module
    implementation: str

    @classmethod
    def build(cls, layer: AttentionLayer, spec: HFSpec) -> HFPlan:
        module, rotary = build_module(layer, spec)
        return cls(layer, spec, module, rotary, module.config._attn_implementation)

    def cache_layer(self, step: Step) -> CacheLayerMixin:
        if self.spec.cache_layer is not None:
            return self.spec.cache_layer(step)
        keys_BKSX, values_BKSX = self.spec.cache(step.cache)
        slots = self.spec.slots(step)
        # The keys the step reads are the mask's key rows: [0, T) of a linear cache, a whole ring.
        T, L = step.mask.kv_len, step.x_BLD.shape[1]
        seen = {"cache": T, "new": L, "cache_then_new": keys_BKSX.shape[2] + L}[slots.read]
        assert seen == T, f"the module would see {seen} keys; the step's mask has {T}"
        assert isinstance(step.kv_start, int)
        return FixedSlotLayer(keys_BKSX, values_BKSX, slots=slots, start=step.kv_start, kv_len=T)

    def bind(self, step: Step) -> Callable[[], Tensor]:
        cache = step.cache
        if cache.paged:
            raise ValueError(f"hf runs transformers' attention module on a contiguous cache: page_size="
                             f"{cache.page_size} is not supported (its modules take no block table)")
        if not isinstance(step.q_start, int) or not isinstance(step.kv_start, int):
            raise ValueError("hf runs uniform batches: a ragged decode batch (seq_lens) is not supported "
                             "(transformers' modules take one position per step)")
        x_BLD = step.x_BLD
        B, L = x_BLD.shape[:2]
        past_key_values = Cache(layers=[self.cache_layer(step)])
        position_ids_BL = torch.arange(step.q_start, step.q_start + L, device=x_BLD.device).expand(B, L)
        with torch.no_grad():
            position_embeddings = self.rotary(x_BLD, position_ids_BL)
        attention_mask = build_mask(self.layer, step, implementation=self.implementation, window=self.spec.window)
        module = self.module

        def closure() -> Tensor:
            with torch.no_grad():
                out_BLD, _ = module(x_BLD, position_embeddings=position_embeddings, attention_mask=attention_mask,
                                    past_key_values=past_key_values, position_ids=position_ids_BL)
            return out_BLD

        return closure
