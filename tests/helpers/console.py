"""What a job prints: the lines that come from Ray's C++ core rather than from us or Ray's Python."""

from __future__ import annotations

import re

# `[2026-01-01 12:00:00,000 E 123 123] core_worker.cc:2465: ...`: a file of Ray's C++ sources and its line
RAY_CORE_LINE = re.compile(r"\b\w+\.(cc|h):\d+:? ")


def ray_core_lines(console: str) -> list[str]:
    """The lines of ``console`` logged by Ray's C++ core (core worker, raylet, GCS)."""
    return [line for line in console.splitlines() if RAY_CORE_LINE.search(line)]
