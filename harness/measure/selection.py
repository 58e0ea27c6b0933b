"""The selection half of the numerics gate, as a family that selects tokens declares it (``variants.selection``)."""

from variants.selection import recorded, replayed, selects_tokens, shortfall

__all__ = ["recorded", "replayed", "selects_tokens", "shortfall"]
