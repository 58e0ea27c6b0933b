"""The GQA -> MLA low-rank study on a real model: per-layer errors, whole-model perplexity, KV bytes.

``study.run_study(settings, out_dir)`` runs it, ``study.main(cfg, out_dir)`` is the Hydra entry
(``task: lowrank``), ``python -m attnbench.harness.studies.lowrank`` the command line; its figures are the report's
(``attnbench.harness.report.figures.lowrank``), drawn by the study and by
``python -m attnbench.harness.report <folder>``.
"""
