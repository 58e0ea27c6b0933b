"""``attnbench selfcheck`` (``python -m harness.selfcheck``): the one command that proves the GPU paths
on a new machine (issue 15). See docs/gpu.md."""
