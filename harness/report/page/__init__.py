"""The report as pages: the folder, markdown summary and self-contained HTML page (``build``,
``html``), the part each kind of rows contributes (``part``, ``lowrank``), a comparison against an
earlier run (``against``) and the docs' figure gallery (``gallery``)."""
