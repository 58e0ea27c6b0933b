"""Implementations are discovered, declare what they support, and plug in from outside."""

from __future__ import annotations

import importlib.metadata
import sys
import types

import pytest
import torch

from attnbench import variants
from tests.reference import reference, rel_err
from tests.shapes import TINY_Q
from attnbench.variants.implementation import KernelImplementation
from attnbench.variants.kernels.eager import EagerKernel
from attnbench.variants.kernels.mla_eager import EagerMLAKernel
from attnbench.variants.registry import Registry


def test_builtin_implementations_and_variants():
    assert variants.implementation_names() == [
        "absorbed", "absorbed_fold_o", "absorbed_native", "absorbed_sdpa", "chunked", "eager", "expanded", "flex", "hf", "sdpa"]
    assert variants.variant_names() == ["csa", "dsa", "gdn", "gqa", "hca", "kda", "mha", "mla", "mqa", "swa"]


def test_support_is_declared_with_a_reason():
    gpu_only = KernelImplementation(name="gpu_only", path="standard", kernel=EagerKernel(),
                                    description="test", devices=("cuda",), dtypes=(torch.bfloat16,))
    layer = variants.build("mla", TINY_Q)
    cpu = torch.device("cpu")
    assert gpu_only.supports(layer, phase="decode", device=cpu, dtype=torch.bfloat16) == \
        "gpu_only runs on cuda only, not cpu"
    assert gpu_only.supports(layer, phase="decode", device=torch.device("cuda"), dtype=torch.float32) == \
        "gpu_only supports dtypes bfloat16 only, not float32"


def test_entry_point_plugin_is_discovered_and_runs(monkeypatch, seed):
    """An external package registers an implementation with no edit to attnbench."""
    plugin = types.ModuleType("fake_plugin")
    plugin.IMPL = KernelImplementation(name="plugged", path="absorbed", kernel=EagerMLAKernel(),
                                       options={"fold_o": False},
                                       description="an out-of-tree implementation")
    monkeypatch.setitem(sys.modules, "fake_plugin", plugin)
    ep = importlib.metadata.EntryPoint(name="plugged", value="fake_plugin:IMPL",
                                       group="attnbench.implementations")
    real = importlib.metadata.entry_points

    def entry_points(**kwargs):
        return [ep] if kwargs.get("group") == "attnbench.implementations" else real(**kwargs)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    registry = Registry("implementation", package="attnbench.variants.impls",
                        entry_point_group="attnbench.implementations")
    monkeypatch.setattr(variants.registry, "IMPLEMENTATIONS", registry)
    assert "plugged" in registry.names()

    layer = variants.build("mla", TINY_Q, seed=seed)
    x_BTD = torch.randn(1, 4, TINY_Q.hidden)
    y = layer.prefill(x_BTD, layer.new_cache(1, 8, impl="plugged"), impl="plugged")
    assert rel_err(y, reference(layer, x_BTD)) <= 1e-5


def test_duplicate_registration_is_refused():
    registry = Registry("implementation", package="attnbench.variants.impls", entry_point_group="none")
    registry.add("x", object())
    with pytest.raises(ValueError, match="registered twice"):
        registry.add("x", object())


@pytest.mark.compile
def test_torch_compile_composes_with_an_implementation(seed):
    layer = variants.build("mla", TINY_Q, dtype=torch.float64, seed=seed)
    x_BTD = torch.randn(1, 6, TINY_Q.hidden, dtype=torch.float64)
    cache = layer.new_cache(1, 8, impl="absorbed")
    layer.prefill(x_BTD[:, :5], cache, impl="absorbed")
    plain = layer.prepare("decode", x_BTD[:, 5:], cache, impl="absorbed")()
    compiled = layer.decode(x_BTD[:, 5:], cache, impl="absorbed", compile="default")
    assert rel_err(compiled, plain) <= 1e-12
    # The reference's RoPE angles are float64, the layer's float32 (the checkpoints' convention).
    assert rel_err(compiled, reference(layer, x_BTD)[:, 5:]) <= 1e-7
