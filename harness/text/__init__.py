"""Text helpers below the report, the nightly history and the sweep: user text made safe for
markdown and figure titles (``escape``), sizes and numbers as people type and read them (``units``)."""
