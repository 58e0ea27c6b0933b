"""``hf``: transformers' own attention module, run under attnbench's timer, cache and numerics gate.

The peer everyone knows, beside attnbench's implementations in one sweep. ``plan`` builds the
module the layer maps to (``attnbench.variants.hf_peer``: LlamaAttention, Qwen2Attention with q/k/v biases,
MistralAttention for a plain window, GptOssAttention for learned sinks, DeepseekV3Attention for
MLA), holding the layer's parameters (shared, not copied); ``bind`` gives it what a transformers
decoder layer would: rotary embeddings from the family's rotary class, transformers' own mask for
its attention implementation, and a cache layer on the attnbench cache's buffers that writes at
the step's positions (``attnbench.variants.hf_peer.runtime`` says why not ``StaticCache`` as is). The module
runs transformers' ``sdpa`` attention, or ``eager`` where the model declares no SDPA support
(gpt-oss, whose sinks SDPA cannot apply); the row's ``sdpa_backend`` says which kernel ran.

transformers is an optional extra (``pip install 'attnbench[hf]'``): without it ``supports`` gives
the install hint (a ``skipped`` row) and ``plan`` raises. Importing this module never imports it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from attnbench.variants.cost import Cost
from attnbench.variants.hf_peer import spec_for
from attnbench.variants.registry import register_implementation

if TYPE_CHECKING:
    from torch import Tensor

    from attnbench.variants.hf_peer.runtime import HFPlan
    from attnbench.variants.layer import AttentionLayer, Phase
    from attnbench.variants.mask import AttnMask

INSTALL_HINT = "pip install 'attnbench[hf]'"


def transformers_missing() -> str | None:
    """None when transformers 5 can be imported, else why not with the install hint (nothing is imported)."""
    try:
        found = importlib.util.find_spec("transformers") is not None
    except ValueError:  # sys.modules["transformers"] is None: imports of it are blocked
        found = False
    if not found:
        return f"hf runs transformers' attention modules, and transformers is not installed: {INSTALL_HINT}"
    version = importlib.metadata.version("transformers")
    if int(version.split(".")[0]) < 5:
        return f"hf needs transformers 5 (its cache layers and mask builders); found {version}: {INSTALL_HINT}"
    return None


@dataclass(frozen=True)
class HFKernel:
    """What ``hf`` declares to the layer in place of an injected kernel: the module attends itself."""

    name: str = "hf"
    dense_causal: bool = False  # the module's mask comes from transformers' mask builder, not the step's
    learned_sinks: bool = True  # GptOssAttention applies them

    def materializes_scores(self, *, device_type: str, qk_dim: int, v_dim: int) -> bool:
        return True  # transformers' eager attention does, and SDPA's math path: the bound for a fallback estimate

    def __call__(self, q_BLNE: Tensor, k_BTKE: Tensor, v_BTKV: Tensor, *, scale: float, mask: AttnMask,
                 sinks_N: Tensor | None = None) -> Tensor:
        raise AssertionError("hf runs transformers' attention module; no step calls its kernel")


@dataclass(frozen=True)
class HFImplementation:
    name: str
    description: str
    path: str = "standard"  # the layer's cache layout is the module's (GQA's K/V, MLA's latent, a window's ring)
    kernel: HFKernel = field(default_factory=HFKernel)

    def supports(self, layer: AttentionLayer, *, phase: Phase, device: torch.device,
                 dtype: torch.dtype) -> str | None:
        reason = transformers_missing()
        if reason is not None:
            return reason
        kv_dtype = getattr(layer, "kv_dtype", "auto")
        if kv_dtype != "auto":
            return (f"kv_dtype={kv_dtype}: hf runs transformers' module on the cache in place, and its modules "
                    "keep keys and values in the compute dtype (use kv_dtype=auto)")
        spec = spec_for(layer)
        return spec if isinstance(spec, str) else None

    def plan(self, layer: AttentionLayer, *, compile: str | None = None) -> HFPlan:
        if compile is not None:
            raise ValueError(f"compile={compile!r} is not offered with hf, which times transformers' module as "
                             "transformers runs it: use compile=none")
        reason = transformers_missing()
        if reason is not None:
            raise ImportError(reason)
        spec = spec_for(layer)
        if isinstance(spec, str):
            raise ValueError(spec)
        from attnbench.variants.hf_peer.runtime import HFPlan

        return HFPlan.build(layer, spec)

    def cost(self, layer: AttentionLayer, *, batch: int, q_len: int, cached: int, new_kv: int,
             dtype: torch.dtype | None = None) -> Cost:
        # The modules compute what the standard path does (DeepseekV3Attention re-expands its cached
        # latent every step); tests/test_hf_impl.py checks the FLOPs against FlopCounterMode.
        return layer.cost(path=self.path, batch=batch, q_len=q_len, cached=cached, new_kv=new_kv, dtype=dtype)


IMPLEMENTATION = register_implementation(HFImplementation(
    name="hf", description="transformers' own attention module (Llama, Qwen2, Mistral, GptOss, DeepseekV3) with "
                           "the layer's weights, through transformers' sdpa (eager for gpt-oss), cache in place"))
