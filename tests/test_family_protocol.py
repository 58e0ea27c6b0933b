"""The family protocol (variants.core.family): every variant has one family, and a family's own shape keys
reach ModelShape, the numerics gate and the row without an edit outside its package."""

from __future__ import annotations

import dataclasses
import json

import pytest

import attnbench.variants.core.families
import attnbench.variants.registry
from attnbench.variants.core.family import Family, shape_field, shape_keys
from attnbench.variants.registry import FAMILIES, VARIANTS, Registry, family_of, family_shape
from attnbench.variants.shape import ModelShape, field_names


def test_every_variant_has_exactly_one_family_and_the_families_agree_on_shared_keys():
    owners = {name: [f.name for f in FAMILIES if name in f.variant_names] for name in VARIANTS.names()}
    assert all(len(found) == 1 for found in owners.values()), owners
    declared = shape_keys(list(FAMILIES))  # raises if two families disagree on a key's kind or default
    assert {"d_r", "index_topk", "sliding_window"} <= set(declared)
    assert set(declared["d_c"].families) >= {"mla", "dsa", "dsv4"}
    # A key that is also a ModelShape field (declared before families held their keys) keeps one default.
    defaults = {f.name: f.default for f in dataclasses.fields(ModelShape)}
    assert {k: key.default for k, key in declared.items() if k in defaults} == \
        {k: defaults[k] for k in declared if k in defaults}


@dataclasses.dataclass(frozen=True)
class ToyShape:
    chunk_size: int = shape_field(64, unit="tokens", meaning="tokens per chunk of the toy recurrence")

    def __post_init__(self) -> None:
        if self.chunk_size <= 0:
            raise ValueError(f"chunk_size={self.chunk_size!r} is not allowed: it must be a positive integer")


@dataclasses.dataclass(frozen=True)
class ToySpec:
    name: str = "toy"
    description: str = "a family with a key of its own"
    uses: tuple[str, ...] = ("hidden", "heads", "chunk_size")


@pytest.fixture
def toy_family(monkeypatch):
    toy = Family(name="toyfam", description="toy", variants=(ToySpec(),), shape=ToyShape,
                 reduce=lambda shape: {"chunk_size": min(shape.chunk_size, 4)})
    families = Registry("family", package="attnbench.variants.families", entry_point_group="none", attribute="FAMILY")
    families.add(toy.name, toy)
    specs = Registry("variant", package="attnbench.variants.families", entry_point_group="none")
    specs.add("toy", ToySpec())
    monkeypatch.setattr(attnbench.variants.core.families, "FAMILIES", families)
    monkeypatch.setattr(attnbench.variants.registry, "VARIANTS", specs)
    return toy


def test_a_new_familys_key_is_routed_read_validated_and_recorded(toy_family):
    assert "chunk_size" not in field_names(ModelShape)  # no edit to ModelShape
    base = ModelShape.from_dict({"hidden": 64, "heads": 4, "head_dim": 16})
    assert base.chunk_size == 64  # the family's default
    shape = ModelShape.from_dict({"hidden": 64, "heads": 4, "head_dim": 16, "chunk_size": 16})
    assert shape.chunk_size == 16 and shape.replace(chunk_size=32).chunk_size == 32 and shape.d_c == 512
    assert ModelShape.from_dict(shape.as_dict()) == shape and ModelShape.from_dict(dataclasses.asdict(shape)) == shape
    with pytest.raises(ValueError, match="chunk_size=0 is not allowed"):
        shape.replace(chunk_size=0)
    with pytest.raises(ValueError, match="unknown shape key 'chunk'; valid: .*chunk_size"):
        shape.replace(chunk=1)
    assert family_of("toy") is toy_family
    assert json.loads(family_shape(shape, "toy")) == {"chunk_size": 16}
    assert family_shape(base, "toy") is None  # at its default: the case_id it had before the key existed

    from attnbench.harness.measure.numerics import reduce_shape

    assert reduce_shape(shape, "toy").chunk_size == 4 and reduce_shape(shape, "toy").heads == 2
