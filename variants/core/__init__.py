"""attnbench's core: the types every family and the harness share, importing nothing above them.

Nothing here imports ``attnbench.variants.families``, ``attnbench.variants.impls`` or ``harness``: a family depends on
the core, the harness asks the core (``attnbench.variants.core.family``) about a family, and neither names
the other.
"""
