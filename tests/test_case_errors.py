"""A case that fails on a bug: one line in the row and on the console, the traceback in the job log."""

from __future__ import annotations

import io
import logging

from attnbench.harness.logs import to_log_files
from attnbench.harness.measure.runner import _one_line


def _bare_assert() -> None:
    # What a bare ``assert`` raises outside pytest (which rewrites asserts to carry a message).
    raise AssertionError


def _raised(function) -> BaseException:  # noqa: ANN001
    try:
        function()
    except BaseException as error:  # noqa: BLE001
        return error
    raise AssertionError("did not raise")


def test_a_bare_assert_names_where_it_was_raised():
    line = _one_line(_raised(_bare_assert))
    assert line.startswith("AssertionError at tests/test_case_errors.py:")
    assert "in _bare_assert" in line and "job log" in line and "\n" not in line


def test_a_message_is_kept_as_its_first_line():
    assert _one_line(ValueError("seq=3 is too short\nmore")) == "ValueError: seq=3 is too short"


def test_the_traceback_goes_to_the_log_file_and_not_the_console(tmp_path):
    logger = logging.getLogger("attnbench.test_case_errors")
    console, log_file = io.StringIO(), tmp_path / "job.log"
    handlers = [logging.StreamHandler(console), logging.FileHandler(log_file)]
    root = logging.getLogger()
    for handler in handlers:
        root.addHandler(handler)
    try:
        assert to_log_files(logger, "mla/eager decode failed", exc_info=_raised(_bare_assert)) >= 1  # pytest's own too
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()
    text = log_file.read_text()
    assert "mla/eager decode failed" in text and "Traceback" in text and "_bare_assert" in text
    assert console.getvalue() == ""
