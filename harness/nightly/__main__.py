"""``python -m attnbench.harness.nightly ...``: see ``attnbench.harness.nightly.cli``."""

import sys

from attnbench.harness.nightly.cli import main

if __name__ == "__main__":
    sys.exit(main())
