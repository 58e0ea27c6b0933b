"""Research studies run on the harness and the variants library; each draws its figures through the
report's figure registry (``harness.report.figures``)."""
