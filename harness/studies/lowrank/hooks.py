"""Reading and replacing a Hugging Face decoder's attention modules.

Legend: B batch, T tokens, D hidden.

- ``capture_attention_inputs``: the hidden states each layer's ``self_attn`` receives (after the
  input RMSNorm), from forward pre-hooks, on one run of the model.
- ``swapped_attention``: runs the model with attnbench layers in place of chosen ``self_attn``
  modules, through ``AttnbenchAttention``, and puts the originals back afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from attnbench.variants.layer import AttentionLayer


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a ``*ForCausalLM`` (Llama, Mistral, Qwen2 layout: ``model.model.layers``)."""
    return model.model.layers


@torch.no_grad()
def capture_attention_inputs(model: nn.Module, ids_BT: Tensor, layers: list[int]) -> dict[int, Tensor]:
    """``{layer: x_BTD}``: what each listed layer's attention sees when the model reads ``ids``."""
    captured: dict[int, Tensor] = {}
    blocks = decoder_layers(model)

    def hook_for(index: int):  # noqa: ANN202
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            x_BTD = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            captured[index] = x_BTD.detach().clone()
        return hook

    handles = [blocks[i].self_attn.register_forward_pre_hook(hook_for(i), with_kwargs=True) for i in layers]
    try:
        model(input_ids=ids_BT, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return captured


class AttnbenchAttention(nn.Module):
    """Stands in for a Hugging Face ``self_attn``: prefill on a fresh cache, positions from 0.

    The decoder block calls ``self_attn(hidden_states=..., position_embeddings=..., attention_mask=...)``
    and unpacks ``(output, weights)``. The attnbench layer applies its own RoPE and causal mask, so
    this holds only for an unpadded batch read from position 0 without a KV cache (how the study
    runs the model: ``use_cache=False``); anything else is refused rather than silently wrong.
    """

    def __init__(self, layer: AttentionLayer, *, impl: str) -> None:
        super().__init__()
        self.layer = layer
        self.impl = impl

    def forward(self, hidden_states: Tensor, *args: Any, past_key_values: Any = None,
                position_ids: Tensor | None = None, **kwargs: Any) -> tuple[Tensor, None]:
        B, T, _ = hidden_states.shape
        if past_key_values is not None:
            raise ValueError("AttnbenchAttention runs prefill only; call the model with use_cache=False")
        if position_ids is not None and not torch.equal(position_ids.cpu(), torch.arange(T).expand_as(position_ids)):
            raise ValueError("AttnbenchAttention needs positions 0..T-1 (no padding, no offset)")
        cache = self.layer.new_cache(B, T, impl=self.impl)
        return self.layer.prefill(hidden_states, cache, impl=self.impl), None


@contextmanager
def swapped_attention(model: nn.Module, layers: Mapping[int, AttentionLayer], *, impl: str) -> Iterator[None]:
    """Within the block, decoder layer i attends with ``layers[i]``; the originals come back after."""
    blocks = decoder_layers(model)
    originals = {i: blocks[i].self_attn for i in layers}
    try:
        for i, layer in layers.items():
            blocks[i].self_attn = AttnbenchAttention(layer, impl=impl)
        yield
    finally:
        for i, module in originals.items():
            blocks[i].self_attn = module
