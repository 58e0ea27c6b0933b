"""attnbench's harness: measurement, results, reports."""
