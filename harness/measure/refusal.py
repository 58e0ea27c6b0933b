"""Whether an exception is attnbench refusing a setting rather than failing.

By the code's convention (``ValueError`` for an input or combination it does not take, ``assert``
for an invariant), a ``ValueError`` with a message raised by attnbench's own code, found only once a
step is built or dry-run (hf on a paged cache, a page size for a linear state), is a refusal: the
case is skipped with that message. A ``ValueError`` raised inside torch or a plugin stays an error.
"""

from __future__ import annotations

import traceback
from pathlib import Path

from attnbench import harness, variants


def is_refusal(error: BaseException) -> bool:
    frames = traceback.extract_tb(error.__traceback__)
    if not isinstance(error, ValueError) or not str(error).strip() or not frames:
        return False
    roots = tuple(str(Path(p).resolve()) for package in (variants, harness) for p in package.__path__)
    return str(Path(frames[-1].filename).resolve()).startswith(roots)
