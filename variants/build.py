"""``build``: a variant's layer from a model shape, preset or keyword dims."""

from __future__ import annotations

import torch

from attnbench.variants.layer import AttentionLayer
from attnbench.variants.registry import VARIANTS, family_of
from attnbench.variants.shape import ATTENTION_KINDS, AttentionKind, ModelShape, check_choice


def build(variant: str, shape: ModelShape | None = None, *, model: str | None = None,
          attention: AttentionKind = "self", dtype: torch.dtype = torch.float32,
          device: torch.device | str = "cpu", seed: int | None = None, **dims: object) -> AttentionLayer:
    """Build ``variant`` (a name of ``attnbench.variants.variant_names()``:
    mha, mqa, gqa, mla, ..., or a plugged-in one).

    The shape is ``shape``, else the preset ``model`` (``conf/model/<model>.yaml``), else ``dims``
    alone; ``dims`` (``heads=``, ``d_c=``, ...) override it. Weights take torch's default init,
    drawn from ``seed`` when given without touching the global random state.
    """
    spec = VARIANTS.get(variant)
    check_choice("attention", attention, ATTENTION_KINDS)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype={dtype!r} is not allowed: a floating torch.dtype (torch.float32, torch.bfloat16, ...)")
    device = _device(device)
    if shape is not None and not isinstance(shape, ModelShape):
        raise ValueError(f"shape={shape!r} is not a ModelShape; pass a preset as model=..., or dims as keywords")
    if shape is None and model is not None:
        from attnbench.variants.presets import load_preset

        shape = load_preset(model)
    shape = shape.replace(**dims) if shape is not None else ModelShape.from_dict(dict(dims))
    reason = family_of(variant).validate(shape, variant)  # a preset this variant cannot build (dsa: no q_rank)
    if reason is not None:
        raise ValueError(reason)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if seed is not None:
            torch.manual_seed(seed)
        with device:
            layer = spec.make(shape, attention)
    return layer.to(dtype=dtype)


def _device(device: object) -> torch.device:
    """``device`` as a torch.device that exists here; else ValueError naming it."""
    try:
        resolved = torch.device(device)  # type: ignore[arg-type]
    except (RuntimeError, TypeError):
        raise ValueError(f"device={device!r} is not a device; valid: cpu, cuda, cuda:<index>, meta") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: CUDA is not available here; valid: cpu, meta")
    return resolved
