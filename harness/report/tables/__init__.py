"""The report's tables: each as raw numbers and as shown text (``views``), written as markdown,
LaTeX, CSV and HTML fragments (``formats``), LaTeX laid out to fit a column (``latex``)."""
