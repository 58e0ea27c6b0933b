"""The ``attnbench`` command: the Hydra app (``run.py``, ``python -m harness``) and its subcommands."""
