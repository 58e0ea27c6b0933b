"""Attention families, one package each exporting ``FAMILY`` (``attnbench.variants.core.family``);
discovered by name."""
