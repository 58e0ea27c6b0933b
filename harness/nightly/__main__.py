"""``python -m harness.nightly ...``: see ``harness.nightly.cli``."""

import sys

from harness.nightly.cli import main

if __name__ == "__main__":
    sys.exit(main())
