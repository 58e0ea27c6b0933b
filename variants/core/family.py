"""The family protocol: everything the harness may ask about one attention design, in one object.

A family is a package ``variants/families/<name>/`` whose ``__init__.py`` exports ``FAMILY``, a
``Family``. Other packages add theirs through the ``attnbench.families`` entry-point group
(``myfam = "my_pkg.myfam:FAMILY"``). Nothing central lists families: ``attnbench.variants.registry.FAMILIES``
discovers them, and the harness reaches a family only through ``family_of(variant)``, never by name.

A new family provides, from its own folder:

- ``variants``: its ``VariantSpec``s (``attnbench.variants.variant``), each registered with ``register_variant``
  when the package is imported (the layer, its paths, cache layout, step runners and cost live in the
  layer class, ``attnbench.variants.layer.AttentionLayer``);
- ``shape``: a frozen dataclass of its own shape keys, each with a default, declared with
  ``shape_field`` (its unit and meaning become the row column's; ``column=True`` gives the key a row
  column of its own, else it travels in the row's ``family_shape``). Presets stay flat YAML: each key
  goes to the family that declares it; a key two families declare must agree on type, default and
  column. ``ModelShape`` keeps the universal keys (hidden, heads, head_dim, kv_heads, num_layers,
  rope_*, qkv_bias, layer_pattern, kv_dtype, name, weights) and takes a family key as a keyword and
  reads it as an attribute (``shape.d_c``);
- ``reduce``: the changes to its own keys that make the numerics gate's small shape (the harness
  has already shrunk hidden, heads and kv_heads; the reduced shape is passed in);
- ``reference_impl``: the implementation that runs the float64 reference of the gate;
- ``selection``: for a family that selects tokens, how the gate records and replays a selection;
- ``validate``: why a preset cannot build this variant (None: it can), e.g. dsa needs q_rank;
- ``report``: colour, marker and order of each variant, its group (dense, sparse, linear, ...),
  which figures apply, and its role in figures that pair groups;
- ``trace``: how its kernel maps to a FlashInfer-Trace Definition (None: not exported).

A cache is any object meeting ``Cache`` (a fixed-size recurrent state fits: its ``nbytes`` does not
grow with the context); its layout meets ``CacheLayoutLike``, which the cost model and the memory
prediction read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

# What a preset's key is routed by and a report groups by; a family may use another group name.
Group = Literal["dense", "sparse", "linear", "hybrid"]
ENTRY_POINT_GROUP = "attnbench.families"


# -- the pieces a family hands over ---------------------------------------------------------------
class VariantLike(Protocol):
    """What the core reads of a ``attnbench.variants.variant.VariantSpec``
    (kept structural: the core imports no layer)."""

    name: str
    description: str
    uses: tuple[str, ...]


class ShapeLike(Protocol):
    """A ``ModelShape``: the universal keys as fields, every family key as an attribute."""

    hidden: int
    heads: int
    head_dim: int
    kv_heads: int | None

    def replace(self, **changes: object) -> ShapeLike: ...


@runtime_checkable
class CacheLayoutLike(Protocol):
    """How a cache lays out what it keeps; sizes are functions of the layout, never ``tokens x bytes``."""

    def bytes_per_token(self, dtype: Any) -> int:
        """Bytes one more token adds (0 for a fixed-size state)."""
        ...

    def bytes_at(self, context: int, dtype: Any) -> int:
        """Bytes one sequence's cache holds at ``context`` tokens."""
        ...

    def nbytes(self, *, batch: int, context: int | Any, dtype: Any, page_size: int | None = None) -> int:
        """Bytes the cache allocates for ``batch`` sequences of ``context`` tokens (one per sequence allowed)."""
        ...


@runtime_checkable
class Cache(Protocol):
    """What the harness does with a layer's cache (``attnbench.variants.cache.KVCache`` meets it)."""

    batch: int
    max_len: int
    length: int  # positions holding valid entries; the harness resets it to repeat a step

    def nbytes(self) -> int:
        """Bytes held by the cache's tensors, measured from the tensors."""
        ...

    def fill_random_(self, length: int, *, seed: int = 0) -> None:
        """Fill ``[0, length)`` as a prefill would have (random values), and mark it valid."""
        ...

    def set_seq_lens(self, seq_lens: Any) -> None:
        """Make the batch ragged: each sequence holds its own number of tokens."""
        ...

    def view(self, end: int, seq_lens_B: Any = None) -> Any:
        """What a kernel receives (storage, block table, lengths, scales, layout): ``attnbench.variants.cache_view``."""
        ...


class Selection(Protocol):
    """How the numerics gate checks a family that selects tokens (``attnbench.harness.measure.numerics``).

    ``recorded(layer)`` yields the list each selection the layer makes is appended to, in call order;
    ``replayed(layer, chosen)`` makes the reference layer use those selections instead of its own and
    yields each one's shortfall against the reference's own scores (0: a top-k of them).
    """

    def applies(self, layer: Any) -> bool: ...

    def recorded(self, layer: Any) -> AbstractContextManager[list[Any]]: ...

    def replayed(self, layer: Any, chosen: list[Any]) -> AbstractContextManager[list[float]]: ...


@dataclass(frozen=True)
class VariantHints:
    """How the report draws one variant (None: the report's fallback cycle)."""

    color: str | None = None
    marker: str | None = None


@dataclass(frozen=True)
class ReportHints:
    """What the report needs to know about a family, without naming it."""

    order: int = 100  # families sort by it (then by name); variants keep the order of ``Family.variants``
    group: str = "dense"  # Group, or a family's own
    variants: Mapping[str, VariantHints] = field(default_factory=dict)
    figures: tuple[str, ...] | None = None  # figure names that apply; None: every figure
    # The crossover figure (harness.report.figures.crossover) sets a "dense" family's variant against
    # the "sparse" ones measured in the same slice; None: not in it.
    crossover: Literal["dense", "sparse"] | None = None
    baseline: str | None = None  # a variant of this family that ratios default to (report --baseline)


@dataclass(frozen=True)
class TraceHints:
    """How a family's kernel maps to FlashInfer-Trace (``attnbench.harness.interop.flashinfer_trace``)."""

    op_type: str  # the Definition's op_type, e.g. "gqa_dense"; its kind (the text before "_") picks the inputs
    # The kernel's kv heads for a row (variant, heads, kv_heads...); None: ``kv_heads`` or ``heads``.
    kv_heads: Callable[[Mapping[str, Any]], int] | None = None
    tag_keys: tuple[str, ...] = ()  # this family's shape keys a Definition's tags carry (to rebuild the case)


def no_reduction(shape: ShapeLike) -> dict[str, object]:
    return {}


def always_valid(shape: ShapeLike, variant: str) -> str | None:
    return None


@dataclass(frozen=True)
class Family:
    name: str  # the package's name; not shown to users (variants are)
    description: str
    variants: tuple[VariantLike, ...]
    shape: type | None = None  # frozen dataclass of this family's own shape keys (``shape_field``), or None
    reduce: Callable[[ShapeLike], Mapping[str, object]] = no_reduction
    reference_impl: str = "eager"  # runs the float64 reference of the numerics gate
    selection: Selection | None = None  # families that select tokens only
    validate: Callable[[ShapeLike, str], str | None] = always_valid  # (shape, variant) -> why not, or None
    report: ReportHints = ReportHints()
    trace: TraceHints | None = None
    # transformers attention classes this family converts (class name -> converter taking the module), read
    # by ``attnbench.variants.from_hf``: a new family's converter lives in its own folder.
    from_hf: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        assert self.variants, f"family {self.name} has no variants"
        assert self.shape is None or dataclasses.is_dataclass(self.shape), f"family {self.name}: shape not a dataclass"

    @property
    def variant_names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.variants)

    def shape_keys(self) -> tuple[str, ...]:
        return () if self.shape is None else tuple(f.name for f in dataclasses.fields(self.shape))

    def shape_defaults(self) -> dict[str, object]:
        return {} if self.shape is None else {f.name: _default(f) for f in dataclasses.fields(self.shape)}


# -- shape fields ---------------------------------------------------------------------------------
def shape_field(default: object, *, meaning: str, unit: str = "", kind: str | None = None,
                identity: bool = True, column: bool = False) -> Any:
    """A field of a family's shape dataclass, with what its row column says: ``meaning``, ``unit`` and
    ``kind`` (``attnbench.harness.results.schema.Kind``; None: from the annotation). ``identity``: enters case_id.
    ``column``: a row column of its own (the figures and tables select on it); else it travels in the row's
    ``family_shape`` column, with the family's other keys."""
    return field(default=default, metadata={"meaning": meaning, "unit": unit, "kind": kind, "identity": identity,
                                            "column": column})


@dataclass(frozen=True)
class ShapeKey:
    """One family shape key as the row declares it (``attnbench.harness.results.schema`` turns it into a column)."""

    name: str
    kind: str  # "int64", "float64", "bool" or "string"
    unit: str
    meaning: str
    default: object
    identity: bool
    families: tuple[str, ...]  # every family declaring it
    column: bool = False  # a row column of its own; else in the row's family_shape column


_KINDS = (("bool", "bool"), ("int", "int64"), ("float", "float64"), ("str", "string"))


def _kind(f: dataclasses.Field) -> str:
    if f.metadata.get("kind"):
        return f.metadata["kind"]
    annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    for word, kind in _KINDS:
        if annotation.startswith(word) or annotation.startswith(f"Optional[{word}"):
            return kind
    return "string"  # a Literal of strings


def _default(f: dataclasses.Field) -> object:
    if f.default is not dataclasses.MISSING:
        return f.default
    assert f.default_factory is not dataclasses.MISSING, f"shape key {f.name} has no default"
    return f.default_factory()


def _said(key: ShapeKey) -> str:
    return f"{key.kind}={key.default!r}" + (" (a column)" if key.column else "")


def shape_keys(families: Iterator[Family] | tuple[Family, ...] | list[Family]) -> dict[str, ShapeKey]:
    """Every family shape key, once, in the order families declare them; two declarations of one key
    must agree on kind and default (d_c for mla, dsa and csa)."""
    out: dict[str, ShapeKey] = {}
    for family in families:
        if family.shape is None:
            continue
        for f in dataclasses.fields(family.shape):
            key = ShapeKey(f.name, _kind(f), f.metadata.get("unit", ""), f.metadata.get("meaning", ""), _default(f),
                           f.metadata.get("identity", True), (family.name,), f.metadata.get("column", False))
            seen = out.get(f.name)
            if seen is None:
                out[f.name] = key
                continue
            if (seen.kind, seen.default, seen.column) != (key.kind, key.default, key.column):
                raise ValueError(f"shape key {f.name!r} is declared by {', '.join(seen.families)} as {_said(seen)} "
                                 f"and by {family.name} as {_said(key)}; one key must have one type, default and "
                                 "column")
            out[f.name] = dataclasses.replace(seen, families=(*seen.families, family.name))
    return out
