"""Name -> object registries for variants and implementations, filled by decorators.

Built-ins are the modules of ``variants.families`` and ``variants.impls``; adding one is one new
folder (a family, ``variants.core.family``) or file (an implementation) there. Other packages add
theirs through Python entry points, without editing attnbench:

    [project.entry-points."attnbench.implementations"]
    flashmla = "my_pkg.flashmla:IMPLEMENTATION"   # an Implementation, or a zero-arg factory of one

Discovery runs on the first lookup, not at import, so importing ``variants`` has no side effects.
"""

from __future__ import annotations

import importlib
import json
import importlib.metadata
import pkgutil
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from variants.core.family import ENTRY_POINT_GROUP, Family, ShapeKey, shape_keys

if TYPE_CHECKING:
    from variants.implementation import Implementation

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, *, package: str, entry_point_group: str, attribute: str | None = None) -> None:
        self.kind = kind
        self.package = package
        self.entry_point_group = entry_point_group
        # None: a module registers its items itself (a decorator); else the module attribute holding one.
        self.attribute = attribute
        self._items: dict[str, T] = {}
        self._discovered = False

    def add(self, name: str, item: T) -> T:
        existing = self._items.get(name)
        if existing is not None and existing is not item:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = item
        return item

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        pkg = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(pkg.__path__):
            module = importlib.import_module(f"{self.package}.{info.name}")
            item = getattr(module, self.attribute, None) if self.attribute else None
            if item is not None:
                self.add(item.name, item)
        for ep in importlib.metadata.entry_points(group=self.entry_point_group):
            loaded = ep.load()
            found = loaded() if callable(loaded) and not hasattr(loaded, "name") else loaded
            for item in found if isinstance(found, (list, tuple)) else [found]:
                self.add(item.name, item)

    def get(self, name: str) -> T:
        self._discover()
        try:
            return self._items[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; valid: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        self._discover()
        return sorted(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter([self._items[n] for n in self.names()])


VARIANTS: Registry = Registry("variant", package="variants.families",
                              entry_point_group="attnbench.variants")
# Every family package's ``FAMILY`` (variants.core.family); discovered with the variants it registers.
FAMILIES: Registry[Family] = Registry("family", package="variants.families", entry_point_group=ENTRY_POINT_GROUP,
                                      attribute="FAMILY")
IMPLEMENTATIONS: Registry = Registry("implementation", package="variants.impls",
                                     entry_point_group="attnbench.implementations")


def implementation(impl: str | Implementation) -> Implementation:
    """The implementation named ``impl`` (an Implementation object passes through).

    Names resolve here, at the edge, and not in the layer: the layer takes what this returns.
    """
    return IMPLEMENTATIONS.get(impl) if isinstance(impl, str) else impl


def family_of(variant: str) -> Family:
    """The family ``variant`` belongs to; a plugged-in variant that no family lists is a family of its own
    (every hint at its default)."""
    for family in FAMILIES:
        if variant in family.variant_names:
            return family
    spec = VARIANTS.get(variant)
    return Family(name=spec.name, description=spec.description, variants=(spec,))


def family_shape_keys() -> dict[str, ShapeKey]:
    """Every family's shape keys (``variants.core.family.shape_keys``), declared once."""
    return shape_keys(families())


def family_shape(shape: Any, variant: str) -> str | None:
    """The family keys of ``shape`` that are not ``ModelShape`` fields and that ``variant`` uses, as JSON text
    (the row's ``family_shape`` column); None when there are none."""
    values = shape.family_values()
    used = {key: values[key] for key in VARIANTS.get(variant).uses if key in values}
    return json.dumps(used, sort_keys=True) if used else None


def families() -> list[Family]:
    """Every family, in report order (``ReportHints.order``, then name)."""
    return sorted(FAMILIES, key=lambda f: (f.report.order, f.name))


def path_unsupported(impl: str, path: str, *, variant: str, paths: tuple[str, ...]) -> str | None:
    """None when a layer of ``variant`` with ``paths`` has ``path``, else the reason, naming the
    variants that have that path and the implementations that run on this layer's paths."""
    if path in paths:
        return None
    owners = [spec.name for spec in VARIANTS if path in spec.family.paths]
    own = [item.name for item in IMPLEMENTATIONS if item.path in paths]
    return f"{impl} applies to {', '.join(owners)} only; {variant} supports: {', '.join(own)}"


def register_implementation(impl: T) -> T:
    """Register an Implementation instance (``register_implementation(MyImpl(...))``)."""
    return IMPLEMENTATIONS.add(impl.name, impl)  # type: ignore[attr-defined]


def register_variant(spec: T) -> T:
    return VARIANTS.add(spec.name, spec)  # type: ignore[attr-defined]

