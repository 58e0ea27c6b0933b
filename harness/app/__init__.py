"""The ``attnbench`` command: the Hydra app (``run.py``, ``python -m attnbench.harness``) and its subcommands."""
