"""`pytest -m gpu` must collect on a machine without the launcher plugins (issue 15, item 10)."""

from __future__ import annotations

import importlib.util

import pytest

from tests.test_launchers import _installed


def test_a_missing_parent_package_is_not_installed_and_does_not_raise():
    with pytest.raises(ModuleNotFoundError):  # the failure the helper exists for: find_spec raises
        importlib.util.find_spec("no_such_parent_pkg_attnbench.launcher")
    assert _installed("no_such_parent_pkg_attnbench.launcher") is False
    assert _installed("json") is True
