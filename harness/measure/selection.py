"""The selection half of the numerics gate, as a family that selects tokens declares it
(``attnbench.variants.selection``)."""

from attnbench.variants.selection import recorded, replayed, selects_tokens, shortfall

__all__ = ["recorded", "replayed", "selects_tokens", "shortfall"]
