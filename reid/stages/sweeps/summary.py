"""The summary table of a sweep: one row per trial (or grid point), saved as CSV and Markdown."""

from __future__ import annotations

import csv
import io as _io
import math
from typing import Any

from reid.core import io


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return "" if value is None else str(value)


def markdown_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table of ``rows`` (columns: the union of their keys, in first-seen order)."""
    columns = columns or list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_summary(rows: list[dict[str, Any]], folder: str, title: str) -> dict[str, str]:
    """Write ``<folder>/summary.csv`` and ``<folder>/summary.md``; returns {"csv": path, "md": path, "table": md}."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buffer = _io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    table = markdown_table(rows, columns)
    paths = {"csv": io.join(folder, "summary.csv"), "md": io.join(folder, "summary.md")}
    io.write_text_atomic(paths["csv"], buffer.getvalue())
    io.write_text_atomic(paths["md"], f"# {title}\n\n{table}")
    return {**paths, "table": table}
