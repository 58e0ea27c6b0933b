"""``attnbench selfcheck`` (``python -m attnbench.harness.selfcheck``): the one command that proves the GPU paths
on a new machine (issue 15). See docs/gpu.md."""
