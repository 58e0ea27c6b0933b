"""A stage that runs past its time is stopped, not waited for.

The time guard (``measure.max_step_s``) predicts a step from the roofline: it cannot see a path
whose cost is many small sequential steps (a recurrent prefill of a linear-attention layer on a CPU
runs one state update per token: 0.7 ms a token at Qwen3-Next's shape, 92 s a step at 128k, where
the roofline says milliseconds). So the stages that run the step before it is timed (the memory dry
run, the first call) also run under a deadline: ``SIGALRM`` after ``seconds`` raises ``Overran`` in
the main thread, between Python operations (a long C call finishes first), and the case is skipped
with how long it ran. Where no alarm is available (a worker thread, Windows) the stage runs unguarded.
"""

from __future__ import annotations

import math
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Overran(Exception):
    """A stage ran past its deadline."""

    def __init__(self, what: str, seconds: float) -> None:
        super().__init__(f"{what} ran past {seconds:g} s and was stopped")
        self.what, self.seconds = what, seconds


@contextmanager
def deadline(seconds: float, what: str) -> Iterator[None]:
    """Raise ``Overran`` inside the block once it has run ``seconds`` (wall time)."""
    usable = (math.isfinite(seconds) and seconds > 0 and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread()
              and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0))  # never over someone else's alarm
    if not usable:
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise Overran(what, seconds)

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
