"""``python -m harness ...``: the ``attnbench`` command (``harness.app.main``)."""

import sys

from harness.app.main import main

if __name__ == "__main__":
    sys.exit(main())
