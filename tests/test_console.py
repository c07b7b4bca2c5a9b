"""reid.core.console: the console handler follows sys.stderr."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from reid.core import console


@pytest.fixture
def routed_logging():
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])


def test_the_console_writes_to_the_stderr_of_the_moment(routed_logging, monkeypatch) -> None:
    """A job run in-process sets up logging while one sys.stderr is in place (a test's capture); a later
    record must reach the sys.stderr in place then, not the first, closed stream ("Logging error")."""
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    console.setup()
    logging.getLogger("reid.test").info("one")
    first.close()
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    logging.getLogger("reid.test").warning("two")
    assert second.getvalue() == "WARNING two\n"
