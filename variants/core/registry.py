"""Name -> object registries, filled on the first lookup from a package's modules and an entry-point group.

A registry is told where to look (``package``, ``entry_point_group``); an item either registers itself
when its module is imported (a decorator calling ``add``) or is the module attribute ``attribute``
names (a family package's ``FAMILY``). Discovery runs on the first lookup, not at import.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

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
        # What ``derived`` computed from the items, by function, with the item count it was computed at.
        self._derived: dict[Callable[..., Any], tuple[int, Any]] = {}

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

    def derived(self, fn: Callable[[Registry[T]], Any]) -> Any:
        """``fn(self)``, computed again only once an item was added since: read on every shape attribute
        (``attnbench.variants.shape.ModelShape``), which must not rebuild it each time."""
        self._discover()
        count = len(self._items)
        seen = self._derived.get(fn)
        if seen is None or seen[0] != count:
            seen = (count, fn(self))
            self._derived[fn] = seen
        return seen[1]
