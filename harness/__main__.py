"""``python -m attnbench.harness ...``: the ``attnbench`` command (``attnbench.harness.app.main``)."""

import sys

from attnbench.harness.app.main import main

if __name__ == "__main__":
    sys.exit(main())
