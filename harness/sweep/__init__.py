"""Orchestration: from a Hydra config to a job's cases, GPU pinning, progress, and a sweep's status."""
