"""The review app's model of a labels output: members, window identities, their centres, the replayed log.

One :class:`ReviewCorpus` per app: it reads the labels once (the columns it needs), the window-identity centres
the label job always writes (``_windows/centroids``) and the per-instance embeddings when the job stored them
(``--save-embeddings``), and keeps the review state in memory, in step with the SQLite log (other tabs, other
processes) before every request. Actions are validated on the state before they are stored.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from reid.core import io
from reid.core.contracts.labels import labels_output, read_centroids, read_labels, windows_output
from reid.core.contracts.review import REVIEW_DB, Action, ReviewLog, open_log
from reid.core.corrections import ReviewState, effective_columns, member_id, replay, split_member_id, unit_id
from reid.core.errors import DataFormatError

LABEL_COLUMNS = ["instance_id", "type", "panel_id", "series_id", "window_id", "char_key", "identity",
                 "series_identity", "distance", "box", "model", "model_sha256", "run_id", "shard"]


@dataclass
class Member:
    """A character instance in a window: its boxes (face and/or body) and where it stands."""

    id: str
    series: int
    unit: str
    panel_id: str
    face_id: str
    body_id: str
    boxes: dict[str, list[int]]
    distance: float
    shard: str


def default_db(labels_root: str) -> str:
    return io.join(labels_root, REVIEW_DB)


class ReviewCorpus:
    """Labels + review log, served to the app (thread-safe: one lock around the state)."""

    def __init__(self, labels_root: str, db_path: str = "") -> None:
        self.labels_root = labels_root
        self.table = read_labels(labels_root, LABEL_COLUMNS, include_unassigned=False)
        self.db_path = db_path or default_db(labels_root)
        self.log: ReviewLog = open_log(self.db_path, labels_root=labels_root)
        metrics_path = io.join(labels_root, "metrics.json")
        self.metrics = json.loads(io.read_text(metrics_path)) if io.exists(metrics_path) else {}
        self.link_threshold = float(self.metrics.get("link_threshold", 0.82))
        run_ids = sorted(set(self.table["run_id"].to_pylist()) - {""})
        self.labels_run = run_ids[0] if run_ids else labels_root
        shas = sorted(set(self.table["model_sha256"].to_pylist()))
        self.model_version = str(self.metrics.get("model_version") or (shas[0][:16] if shas else ""))
        self.base_names = applied_names(labels_root)
        self._load_members()
        self._load_vectors()
        self.lock = threading.RLock()
        self.state = replay(self.table, [], self.base_names)
        self.last_id = 0
        self.version = 0
        self.sync()

    # -- loading ---------------------------------------------------------------------------------------

    def _load_members(self) -> None:
        self.members: dict[str, Member] = {}
        self.instance_shard: dict[str, str] = {}
        self.instance_box: dict[str, tuple[str, list[int]]] = {}
        cols = {c: self.table[c].to_pylist() for c in ("instance_id", "type", "panel_id", "series_id", "window_id",
                                                       "char_key", "identity", "distance", "box", "shard")}
        for i in range(self.table.num_rows):
            key, window = cols["char_key"][i], cols["window_id"][i]
            mid = member_id(key, window)
            member = self.members.get(mid)
            if member is None:
                member = self.members[mid] = Member(mid, cols["series_id"][i], unit_id(window, cols["identity"][i]),
                                                    cols["panel_id"][i], "", "", {}, float(cols["distance"][i]),
                                                    cols["shard"][i])
            kind, instance = cols["type"][i], cols["instance_id"][i]
            setattr(member, f"{kind}_id", instance)
            member.boxes[kind] = list(cols["box"][i])
            self.instance_shard[instance] = cols["shard"][i]
            self.instance_box[instance] = (cols["panel_id"][i], list(cols["box"][i]))

    def _load_vectors(self) -> None:
        """Unit centres (always) and member embeddings (when stored) as unit rows."""
        shards = sorted(set(self.table["shard"].to_pylist()))
        centroids = read_centroids(self.labels_root, shards)
        self.unit_index = {unit_id(w, k): i for i, (w, k) in enumerate(zip(
            centroids["window_id"].to_pylist(), centroids["identity"].to_pylist(), strict=True))}
        self.unit_vectors = _unit_rows(np.asarray(centroids["centroid"].to_pylist(), np.float32))
        missing = [u for u in {m.unit for m in self.members.values()} if u not in self.unit_index]
        if missing:
            raise DataFormatError(self.labels_root, f"{len(missing)} window identities have no centre in "
                                                    f"_windows/centroids (first: {missing[0]})")
        self.member_ids = sorted(self.members)
        self.member_row = {m: i for i, m in enumerate(self.member_ids)}
        vectors = self.unit_vectors[[self.unit_index[self.members[m].unit] for m in self.member_ids]]
        self.has_embeddings = False
        output = windows_output(self.labels_root)
        stored = [s for s in shards if io.exists(output.sidecar_path("embeddings", s))]
        if stored:
            from reid.core.contracts.labels import read_embeddings

            by_key: dict[str, np.ndarray] = {}
            for s in stored:
                by_key.update(read_embeddings(self.labels_root, s))
            rows = [i for i, m in enumerate(self.member_ids) if split_member_id(m)[0] in by_key]
            if rows:
                keys = [split_member_id(self.member_ids[i])[0] for i in rows]
                vectors[rows] = _unit_rows(np.stack([by_key[k] for k in keys]))
                self.has_embeddings = True
        self.member_vectors = vectors
        self.member_series = np.asarray([self.members[m].series for m in self.member_ids], np.int64)

    # -- the log ---------------------------------------------------------------------------------------

    def sync(self) -> None:
        """Apply the actions other tabs or processes stored since the last look (an undo: replay all)."""
        with self.lock:
            new = self.log.actions(after=self.last_id)
            if not new:
                return
            if any(a.kind == "undo" for a in new):
                self._replay_log()
            else:
                for action in new:
                    self.state.apply(action)
                self.last_id = new[-1].id
            self.version += 1

    def _replay_log(self) -> None:
        """The state rebuilt from the whole log, and ``last_id`` the newest action it holds: another process may
        have appended since this one's own last write, and that action is now applied, never to be applied again."""
        everything = self.log.actions()
        self.state = replay(self.table, everything, self.base_names)
        self.last_id = everything[-1].id if everything else 0

    def act(self, kind: str, payload: dict[str, Any], reviewer: str = "") -> Action:
        """Validate an action on the current state, then store it. Raises ReviewActionError (nothing stored)."""
        with self.lock:
            self.sync()
            if kind == "undo":
                return self.undo(payload.get("action"), reviewer)
            self.state.apply(Action(0, "", kind, payload, self.labels_run, self.model_version, reviewer))
            stored = self.log.append(kind, payload, self.labels_run, self.model_version, reviewer)
            if stored.id != self.last_id + 1:  # someone else wrote in between: replay in the log's order
                self._replay_log()
            else:
                self.last_id = stored.id
            self.version += 1
            return stored

    def undo(self, action: int | None = None, reviewer: str = "") -> Action:
        """Undo ``action`` (default: the latest action that still counts)."""
        from reid.core.contracts.review import effective_actions
        from reid.core.corrections import ReviewActionError

        with self.lock:
            counting = effective_actions(self.log.actions())
            if action is None:
                if not counting:
                    raise ReviewActionError("nothing to undo")
                action = counting[-1].id
            if int(action) not in {a.id for a in counting}:
                raise ReviewActionError(f"action {action} does not count now (unknown or already undone)")
            stored = self.log.append("undo", {"action": int(action)}, self.labels_run, self.model_version,
                                     reviewer)
            self._replay_log()
            self.version += 1
            return stored

    # -- vectors of the current state ------------------------------------------------------------------

    def identity_labels(self) -> np.ndarray:
        """(M,) reviewed identity of every member, in ``member_ids`` order."""
        return np.asarray([self.state.book[m] for m in self.member_ids], np.int64)

    def centres(self, series: int) -> tuple[list[tuple[int, int]], np.ndarray, np.ndarray]:
        """(identities, their unit centres (K, D), member rows' identity index (M_series,)) of one series."""
        rows = np.flatnonzero(self.member_series == series)
        labels = np.asarray([self.state.book[self.member_ids[r]] for r in rows], np.int64)
        idents, inverse = np.unique(labels, return_inverse=True)
        sums = np.zeros((len(idents), self.member_vectors.shape[1]))
        np.add.at(sums, inverse, self.member_vectors[rows])
        return [(series, int(i)) for i in idents], _unit_rows(sums), inverse

    def effective_table(self):
        """The full labels (unassigned rows too) with the review applied (:func:`reid.stages.review.effective_labels`)."""
        with self.lock:
            self.sync()
            return effective_columns(read_labels(self.labels_root), self.state)

    def is_complete(self) -> bool:
        return labels_output(self.labels_root).is_complete()


def applied_names(labels_root: str) -> dict[tuple[int, int], str]:
    """Names a corrected label run carried over (``corrections.json``: the identities a reviewer named)."""
    from reid.core.contracts.review import read_applied_corrections

    applied = read_applied_corrections(labels_root) or {}
    return {(int(s), int(i)): name for s, i, name in applied.get("names", [])}


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    if x.size == 0:
        return x.reshape(len(x), -1)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def identity_members(state: ReviewState, series: int, identity: int) -> list[str]:
    return sorted(state.ids.get((series, identity), ()))


def by_identity(state: ReviewState, series: int) -> dict[int, list[str]]:
    out: dict[int, list[str]] = defaultdict(list)
    for (s, i), members in state.ids.items():
        if s == series:
            out[i] = sorted(members)
    return dict(out)
