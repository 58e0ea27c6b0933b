"""Nightly performance tracking: a history of runs (``store``, in one file that every write replaces
atomically: ``dbfile``), built from results folders (``ingest``), judged against a baseline
(``ratio``, ``compare``), summarised for CI (``markdown``) and plotted over time (``trend``). The
command line is ``python -m attnbench.harness.nightly`` (``cli``); the workflow around it is in docs/nightly.md.
"""
