"""Shared entry-point behaviour of ``jobs/*.py`` and ``tune/*.py``."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from reid.errors import ReidError


def run_main(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> int:
    """Run a job's ``main``; a project error prints one clear line and exits 2 instead of a traceback."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        main(argv)
    except ReidError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return 0
