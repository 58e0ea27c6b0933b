"""The error a user's own mistake raises: printed as one line, no traceback, exit status 2."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


class UserError(ValueError):
    pass


class ArgumentParser(argparse.ArgumentParser):
    """argparse with its errors as every attnbench command prints them: one ``error:`` line, exit 2
    (argparse's own adds the usage block above it)."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {self.prog}: {message} (see --help)", file=sys.stderr)
        sys.exit(2)
