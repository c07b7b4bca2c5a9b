"""Shared entry-point behaviour of ``jobs/*.py`` and ``tune/*.py``."""

from __future__ import annotations

import sys
from collections.abc import Callable

from reid.core import console
from reid.core.errors import ReidError


def run_main(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> int:
    """Run a job's ``main``; a project error prints one clear line and exits 2 instead of a traceback.

    The console shows our lines only; the rest goes to the job's log file (:mod:`reid.core.console`), which is written
    unless the job stopped on bad input before doing anything (then there is nothing to keep)."""
    args = sys.argv[1:] if argv is None else argv
    console.setup("--verbose" in args)
    try:
        main(argv)
    except ReidError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except BaseException:
        path = console.open_log()
        if path:
            print(f"the job's full log: {path}", file=sys.stderr)
        raise
    path = console.open_log()
    if path:
        print(f"log: {path}")
    return 0
