"""Studies that use the harness and the variants library (they live beside the harness, not in it)."""
