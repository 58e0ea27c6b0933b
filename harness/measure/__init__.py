"""Measurement: one case from support check to row (timer, statistics, memory, ceilings, telemetry, numerics)."""
