"""The review log contract: a reviewer's corrections of a labels output, as an append-only SQLite log.

``<labels>/review.db`` (by default) holds one row per action (merge, move, name, not-a-character, a queue
answer, undo), each timestamped with the labels run and model version it was made on. Nothing is ever
updated or deleted: an undo is an action too. The database runs in WAL mode with a busy timeout, so two
browser tabs or two reviewers writing at once both persist. The label output's Parquet is never rewritten;
:mod:`reid.core.corrections` replays the log over it (effective labels, constraints for the next label run).

Action payloads (JSON; identities are series identities of one ``series``; a *unit* is a window identity
``"<window_id>#<identity>"``, a *member* a character instance in a window ``"<char_key>@<window_id>"``):

- ``merge``: ``{series, identities: [a, b, ...]}``: all into ``a``;
- ``move``: ``{series, units: [...], members: [...], to: identity | null}``: onto ``to`` or a new identity;
- ``name``: ``{targets: [[series, identity], ...], name}`` (``""`` clears it);
- ``extra``: ``{series, identity | units | members, value: bool}``: "not a character / unnamed extra";
- ``same``: ``{series, a, b, answer: "yes" | "no"}``: are two identities one character;
- ``belongs``: ``{series, unit, identity, answer: "yes" | "no", other: identity | null}``;
- ``undo``: ``{action: id}``: the action no longer counts (its own undo cannot be undone; redo it instead).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from reid.core.errors import DataFormatError

REVIEW_DB = "review.db"
KINDS = ("merge", "move", "name", "extra", "same", "belongs", "undo")
SCHEMA_VERSION = "1"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS actions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    labels_run TEXT NOT NULL,
    model_version TEXT NOT NULL,
    reviewer TEXT NOT NULL DEFAULT ''
);
"""


@dataclass(frozen=True)
class Action:
    """One row of the log."""

    id: int
    at: str
    kind: str
    payload: dict[str, Any]
    labels_run: str
    model_version: str
    reviewer: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "at": self.at, "kind": self.kind, "payload": self.payload,
                "labels_run": self.labels_run, "model_version": self.model_version, "reviewer": self.reviewer}


class ReviewLog:
    """The append-only action log of one labels output (a SQLite file; one connection per call, so it is
    safe from any thread or process)."""

    def __init__(self, path: str, labels_root: str | None = None) -> None:
        self.path = path
        with self._connect() as db:
            db.executescript(_SCHEMA)
            db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
            if labels_root is not None:
                db.execute("INSERT OR IGNORE INTO meta VALUES ('labels_root', ?)", (labels_root,))

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        except sqlite3.Error as exc:
            raise DataFormatError(self.path, f"cannot open the review database: {exc}") from None
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=30000")
            db.execute("PRAGMA synchronous=NORMAL")
            yield db
        except sqlite3.DatabaseError as exc:
            raise DataFormatError(self.path, f"not a readable review database: {exc}") from None
        finally:
            db.close()

    def meta(self) -> dict[str, str]:
        with self._connect() as db:
            return dict(db.execute("SELECT key, value FROM meta").fetchall())

    def append(self, kind: str, payload: dict[str, Any], labels_run: str, model_version: str,
               reviewer: str = "") -> Action:
        """Store one action (a transaction of its own) and return it with its id and timestamp."""
        if kind not in KINDS:
            raise ValueError(f"unknown review action {kind!r}: expected one of {KINDS}")
        at = datetime.now(UTC).isoformat(timespec="milliseconds")
        with self._connect() as db:
            cursor = db.execute("INSERT INTO actions (at, kind, payload, labels_run, model_version, reviewer) "
                                "VALUES (?, ?, ?, ?, ?, ?)",
                                (at, kind, json.dumps(payload, sort_keys=True), labels_run, model_version,
                                 reviewer))
            return Action(int(cursor.lastrowid or 0), at, kind, payload, labels_run, model_version, reviewer)

    def actions(self, after: int = 0) -> list[Action]:
        """Every action with an id above ``after``, in the order they were stored (undos included)."""
        with self._connect() as db:
            rows = db.execute("SELECT id, at, kind, payload, labels_run, model_version, reviewer FROM actions "
                              "WHERE id > ? ORDER BY id", (after,)).fetchall()
        out = []
        for id_, at, kind, payload, labels_run, model_version, reviewer in rows:
            try:
                out.append(Action(id_, at, kind, json.loads(payload), labels_run, model_version, reviewer))
            except json.JSONDecodeError as exc:
                raise DataFormatError(self.path, f"payload is not JSON ({exc})", f"action {id_}") from None
        return out


def effective_actions(actions: list[Action]) -> list[Action]:
    """The actions that count, in order: every non-undo action that no later undo names."""
    undone = {int(a.payload.get("action", -1)) for a in actions if a.kind == "undo"}
    return [a for a in actions if a.kind != "undo" and a.id not in undone]


def open_log(path: str, must_exist: bool = False, labels_root: str | None = None) -> ReviewLog:
    """The review log at ``path``; ``must_exist`` refuses a missing file (``--corrections`` of a typo)."""
    import os

    if must_exist and not os.path.isfile(path):
        raise DataFormatError(path, "review database not found (jobs/review.py creates it beside the labels)")
    if must_exist:
        with open(path, "rb") as f:
            if f.read(16) != b"SQLite format 3\x00":
                raise DataFormatError(path, "not a SQLite review database")
    return ReviewLog(path, labels_root)


APPLIED_FILE = "corrections.json"
"""Written by a label run with ``--corrections`` under its output: the review log it read, the groups and
cannot-links it applied at window and series level, and the identities whose id and name it kept
(``names``: ``[[series, identity, name], ...]``)."""


def read_applied_corrections(labels_root: str) -> dict[str, Any] | None:
    """What a corrected label run applied (None for a run without ``--corrections``)."""
    from reid.core import io

    path = io.join(labels_root, APPLIED_FILE)
    return json.loads(io.read_text(path)) if io.exists(path) else None
