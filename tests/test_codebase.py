"""Rules of the code base that no other test sees, checked on the source (``ast``, ``tokenize``; nothing is
imported).

- Docstrings and comments say what and why; history (issue numbers, dates) lives in ``docs/`` and the log.
- Instance, panel, page and window ids are built and parsed only by the modules that define them
  (``reid/core/data/ids.py``, ``reid/core/contracts/labels.py`` for row ids, ``reid/core/corrections.py`` for review units).
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CODE = sorted(p for folder in ("reid", "jobs", "tune", "cluster") for p in (REPO / folder).rglob("*.py"))
TESTS = sorted(p for p in [*REPO.glob("tests/*.py"), *REPO.glob("tests/helpers/*.py")]
               if p != Path(__file__).resolve())  # this file spells the patterns it looks for

HISTORY = re.compile(r"\bissues?\s*#?\d+|(?:^|(?<=[\s(]))#\d+\b|\b(?:19|20)\d\d-(?:0[1-9]|1[0-2])\b", re.IGNORECASE)
# a separator of the id formats, split on or joined with by hand
HAND_MADE_ID = re.compile(r"""\.r?split\(\s*["'][_+@#]["']|["'][_+@#]["']\.join\(""")
ID_MODULES = {"reid/core/data/ids.py", "reid/core/contracts/labels.py", "reid/core/corrections.py",
              "reid/runtime/registry.py"}  # registry: MLflow model URIs (name@alias) and package versions, not ids


def _prose(path: Path) -> Iterator[tuple[int, str]]:
    """(line, text) of every docstring and comment of a Python file."""
    source = path.read_text()
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            docstring = ast.get_docstring(node, clean=False)
            if docstring:
                yield node.body[0].lineno, docstring
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            yield token.start[0], token.string


def _code_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line, text) of a Python file with its comments removed."""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        yield number, line.split("  #")[0]


@pytest.mark.parametrize("path", CODE, ids=lambda p: str(p.relative_to(REPO)))
def test_docstrings_and_comments_hold_no_history(path: Path) -> None:
    found = [f"{path.relative_to(REPO)}:{line}: {m.group(0)!r}" for line, text in _prose(path)
             for m in HISTORY.finditer(text)]
    assert not found, f"issue numbers and dates belong in docs/ and the commit log: {found}"


def test_the_patterns_find_what_they_should() -> None:
    for text in ("all four targets of issue 17", "see Issues #27", "(#27)", "a fresh run on 2026-12-02"):
        assert HISTORY.search(text), text
    for text in ("upstream ray#26293", "f'{panel}#0'", "# 0.10 .. 1.90", "resnet-50, 1443_58_6", "2026 pages"):
        assert not HISTORY.search(text), text
    for code in ('p.split("_")', "w.rsplit('@', 1)", '"+".join(panels)', 'key.split("#")[0]'):
        assert HAND_MADE_ID.search(code), code
    for code in ('shard.split("-", 1)', 'line.split(",")', '"-".join(parts)'):
        assert not HAND_MADE_ID.search(code), code


@pytest.mark.parametrize("path", [p for p in CODE + TESTS if str(p.relative_to(REPO)) not in ID_MODULES],
                         ids=lambda p: str(p.relative_to(REPO)))
def test_ids_are_not_split_or_joined_by_hand(path: Path) -> None:
    found = [f"{path.relative_to(REPO)}:{line}: {text.strip()}" for line, text in _code_lines(path)
             if HAND_MADE_ID.search(text)]
    assert not found, f"use reid.core.data.ids / reid.core.contracts.labels / reid.core.corrections: {found}"


def test_every_reliability_claim_names_a_test_that_exists() -> None:
    """docs/RELIABILITY.md's tables promise what survives a fault and what a bad input gives: each row names
    the test that proves it (``test_<file>.py::test_<name>``), and that test exists."""
    doc = REPO / "docs" / "RELIABILITY.md"
    rows = [line for line in doc.read_text().splitlines()
            if line.startswith("| ") and not line.startswith(("| ---", "| fault |", "| input |"))]
    assert len(rows) >= 20, "the tables are gone"
    unproven = []
    for row in rows:
        refs = re.findall(r"(test_\w+\.py)::(test_\w+)", row)
        exists = [(REPO / "tests" / file).is_file()
                  and re.search(rf"^(?:async )?def {name}\(", (REPO / "tests" / file).read_text(), re.MULTILINE)
                  for file, name in refs]
        if not refs or not all(exists):
            unproven.append(f"{row[:100]}... names {refs or 'no test'}")
    assert not unproven, "\n".join(unproven)


def test_no_function_in_reid_is_longer_than_60_lines() -> None:
    """A function a reader can hold in view: none in ``reid/`` runs over 60 lines (docstring included)."""
    long = [f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in CODE if path.is_relative_to(REPO / "reid")
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > 60]
    assert not long, "\n".join(long)


def test_reliability_figures_count_the_rows_of_its_tables() -> None:
    """The figures at the top of docs/RELIABILITY.md are the counts of its tables, and every row checked row by
    row lost and duplicated nothing."""
    text = (REPO / "docs" / "RELIABILITY.md").read_text()

    def rows(start: str, end: str | None, header: str) -> list[list[str]]:
        section = text[text.index(start):text.index(end) if end else None]
        return [[c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines()
                if line.startswith("| ") and not line.startswith(("| ---", header))]

    faults = rows("## Faults injected", "## What a worker says", "| fault |")
    inputs = rows("## Bad input: what the user sees", None, "| input |")
    checked = [r for r in faults if r[-2:] != ["n/a", "n/a"]]
    assert all(r[-2:] == ["0", "0"] for r in checked), [r[0] for r in checked if r[-2:] != ["0", "0"]]
    figures = (f"{len(faults)} faults injected, {len(faults)} survived** ({len(checked)} of them checked row by "
               f"row: rows lost 0, rows duplicated 0);\n**{len(inputs)} kinds of bad input tried, {len(inputs)} "
               f"refused or recorded**")
    assert figures in text, figures
