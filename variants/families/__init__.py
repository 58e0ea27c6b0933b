"""Attention families, one file each; ``variants.registry`` discovers every module here."""
