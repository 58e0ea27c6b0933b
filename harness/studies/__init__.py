"""Research studies run on the harness and the variants library; each draws its figures through the
report's figure registry (``attnbench.harness.report.figures``)."""
