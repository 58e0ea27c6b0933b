"""Name -> object registries for variants and implementations, filled by decorators.

Built-ins are the modules of ``attnbench.variants.families`` and ``attnbench.variants.impls``; adding one is one new
folder (a family, ``attnbench.variants.core.family``) or file (an implementation) there. Other packages add
theirs through Python entry points, without editing attnbench:

    [project.entry-points."attnbench.implementations"]
    flashmla = "my_pkg.flashmla:IMPLEMENTATION"   # an Implementation, or a zero-arg factory of one

Discovery runs on the first lookup, not at import, so importing ``variants`` has no side effects.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, TypeVar

from attnbench.variants.core.families import FAMILIES, families, family_shape_keys
from attnbench.variants.core.family import Family
from attnbench.variants.core.registry import Registry

if TYPE_CHECKING:
    from attnbench.variants.core.plan import Implementation

T = TypeVar("T")
__all__ = ["FAMILIES", "IMPLEMENTATIONS", "VARIANTS", "Registry", "families", "family_of", "family_shape",
           "family_shape_keys", "implementation", "path_unsupported", "register_implementation", "register_variant"]


VARIANTS: Registry = Registry("variant", package="attnbench.variants.families",
                              entry_point_group="attnbench.variants")
IMPLEMENTATIONS: Registry = Registry("implementation", package="attnbench.variants.impls",
                                     entry_point_group="attnbench.implementations")


def implementation(impl: str | Implementation) -> Implementation:
    """The implementation named ``impl`` (an Implementation object passes through).

    Names resolve here, at the edge, and not in the layer: the layer takes what this returns.
    """
    return IMPLEMENTATIONS.get(impl) if isinstance(impl, str) else impl


def family_of(variant: str) -> Family:
    """The family ``variant`` belongs to; a plugged-in variant that no family lists is a family of its own
    (every hint at its default)."""
    for family in families():
        if variant in family.variant_names:
            return family
    spec = VARIANTS.get(variant)
    return Family(name=spec.name, description=spec.description, variants=(spec,))


def family_shape(shape: Any, variant: str) -> str | None:
    """The family keys of ``shape`` that are neither ``ModelShape`` fields nor columns of their own and that
    ``variant`` uses, as JSON text (the row's ``family_shape`` column); None when there are none."""
    values = shape.family_values()
    declared = family_shape_keys()
    # A key at its default is left out: the case_id a case had before its family declared the key.
    used = {key: values[key] for key in VARIANTS.get(variant).uses
            if key in values and not declared[key].column and values[key] != declared[key].default}
    return json.dumps(used, sort_keys=True) if used else None


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

