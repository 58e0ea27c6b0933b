"""Kernel interface v2: an implementation plans once per layer, and a decode loop reuses the plan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch

from attnbench import variants
from tests.reference import reference, rel_err
from tests.shapes import TINY
from attnbench.variants.families.mla import MLA
from attnbench.variants.registry import IMPLEMENTATIONS


@dataclass
class Counting:
    """An implementation that counts its plans and binds, delegating everything to ``inner``."""

    inner: Any
    plans: int = 0
    binds: int = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def plan(self, layer: Any, *, compile: str | None = None) -> Any:
        self.plans += 1
        inner, outer = self.inner.plan(layer, compile=compile), self

        class _Plan:
            def bind(self, step: Any) -> Any:
                outer.binds += 1
                return inner.bind(step)

        return _Plan()


@pytest.mark.parametrize(("variant", "impl"), [("gqa", "eager"), ("gqa", "sdpa"), ("mla", "absorbed"),
                                               ("mla", "absorbed_fold_o"), ("mla", "expanded")])
def test_decode_in_a_loop_plans_once(variant: str, impl: str) -> None:
    torch.manual_seed(0)
    layer = variants.build(variant, TINY, dtype=torch.float64)
    counting = Counting(IMPLEMENTATIONS.get(impl))
    x_BTD = torch.randn(2, 7, TINY.hidden, dtype=torch.float64)
    cache = layer.new_cache(2, 8, impl=impl)
    outs = [layer.prefill(x_BTD[:, :3], cache, impl=counting)]
    outs += [layer.decode(x_BTD[:, t:t + 1], cache, impl=counting) for t in range(3, 7)]
    assert (counting.plans, counting.binds) == (1, 5)
    # The reused plan still runs each token at its own position (the RoPE angles are float32,
    # so float64 agrees to ~1e-8; a wrong position is off by ~1e-1).
    assert rel_err(torch.cat(outs, dim=1), reference(layer, x_BTD)) <= 1e-7


def test_absorbed_weights_are_built_once_per_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    builds = []
    real = MLA.absorbed_weights

    def counted(self: MLA, **kwargs: Any) -> Any:
        builds.append(kwargs)
        return real(self, **kwargs)

    monkeypatch.setattr(MLA, "absorbed_weights", counted)
    layer = variants.build("mla", TINY)
    cache = layer.new_cache(1, 16, impl="absorbed")
    layer.prefill(torch.randn(1, 4, TINY.hidden), cache, impl="absorbed")
    for _ in range(10):
        layer.decode(torch.randn(1, 1, TINY.hidden), cache, impl="absorbed")
    assert builds == [{"fold_o": False}]
    # An explicit plan is the same handle: one build, any number of steps.
    plan = layer.plan("absorbed_fold_o")
    cache2 = layer.new_cache(1, 16, impl="absorbed")
    plan.prefill(torch.randn(1, 4, TINY.hidden), cache2)
    for _ in range(3):
        plan.decode(torch.randn(1, 1, TINY.hidden), cache2)
    assert builds == [{"fold_o": False}, {"fold_o": True}]
    assert cache2.length == 7


def test_prepare_still_gives_a_repeatable_closure() -> None:
    layer = variants.build("gqa", TINY)
    cache = layer.new_cache(1, 8)
    cache.fill_random_(5)
    step = layer.prepare("decode", torch.randn(1, 1, TINY.hidden), cache)
    torch.testing.assert_close(step(), step(), rtol=0, atol=0)
    assert cache.length == 5


def test_a_plan_refuses_a_cache_of_another_path() -> None:
    layer = variants.build("mla", TINY)
    plan = layer.plan("expanded")
    with pytest.raises(ValueError, match=r"^this cache was made for another path; use layer.new_cache\(\.\.\., "
                                         r"impl='expanded'\)$"):
        plan.decode(torch.randn(1, 1, TINY.hidden), layer.new_cache(1, 4, impl="absorbed"))


def test_plan_refuses_an_unknown_compile_mode() -> None:
    with pytest.raises(ValueError, match="^compile='fast' is not one of: default, reduce-overhead, max-autotune"):
        variants.build("gqa", TINY).plan("eager", compile="fast")
