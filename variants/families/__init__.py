"""Attention families, one package each exporting ``FAMILY`` (``variants.core.family``); discovered by name."""
