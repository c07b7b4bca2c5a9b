"""The review log (SQLite, append-only, WAL), the replay of its actions over labels, the constraints the next
label run gets, and must-links in the constrained clustering (against a brute-force reference)."""

from __future__ import annotations

import sqlite3
import threading
from itertools import combinations

import numpy as np
import pyarrow as pa
import pytest

from reid.core.assign import constrained_agglomerative
from reid.core.contracts.review import Action, ReviewLog, effective_actions, open_log
from reid.core.corrections import (
    Corrections,
    ReviewActionError,
    corrections_from_state,
    effective_columns,
    member_id,
    replay,
    stable_identities,
    unit_id,
)
from reid.core.errors import DataFormatError

W1, W2 = "1_0_0+1_0_1+1_0_2+1_0_3", "1_1_0+1_1_1+1_1_2+1_1_3"


def labels_table() -> pa.Table:
    """Series 1: window 1 has identities 0 (a, b) and 1 (c); window 2 has 0 (d) and 1 (e, f).
    Linked into series identities 0 = {a, b, d}, 1 = {c}, 2 = {e, f}. Faces and bodies: two rows per instance."""
    rows = []
    for window, key, identity, book in [(W1, "a", 0, 0), (W1, "b", 0, 0), (W1, "c", 1, 1), (W2, "d", 0, 0),
                                        (W2, "e", 1, 2), (W2, "f", 1, 2)]:
        for kind in ("face", "body"):
            rows.append({"series_id": 1, "window_id": window, "char_key": key, "identity": identity,
                         "series_identity": book, "type": kind})
    rows.append({"series_id": 1, "window_id": W2, "char_key": "u", "identity": None, "series_identity": None,
                 "type": "face"})  # an unassigned row
    return pa.Table.from_pylist(rows)


def action(id_: int, kind: str, **payload) -> Action:
    return Action(id_, "", kind, payload, "run", "model")


def members_of(state, identity: int) -> set[str]:
    return {state.key_of[m] for m in state.ids.get((1, identity), ())}


def test_merge_move_name_and_undo_replay_in_order() -> None:
    actions = [action(1, "merge", series=1, identities=[2, 1]),
               action(2, "name", targets=[[1, 2]], name="Hero"),
               action(3, "move", series=1, members=[member_id("f", W2)], to=None),
               action(4, "move", series=1, units=[unit_id(W1, 0)], to=2),
               action(5, "undo", action=4)]
    state = replay(labels_table(), actions)
    assert members_of(state, 0) == {"a", "b", "d"}
    assert members_of(state, 2) == {"c", "e"}
    assert members_of(state, 3) == {"f"}  # a new identity: the series' largest + 1
    assert state.names == {(1, 2): "Hero"}
    assert state.touched == {(1, 2), (1, 3)}
    assert state.applied == 3  # the undone move is skipped
    assert [a.id for a in effective_actions(actions)] == [1, 2, 3]
    without_undo = replay(labels_table(), actions[:4])
    assert members_of(without_undo, 2) == {"a", "b", "c", "e"}


def test_a_bad_action_names_itself_and_changes_nothing() -> None:
    state = replay(labels_table(), [])
    before = dict(state.book)
    for bad, words in [(action(7, "merge", series=1, identities=[0, 9]), "no identity 9"),
                       (action(8, "move", series=1, members=["nobody@x"], to=None), "nobody@x"),
                       (action(9, "merge", series=1), "bad payload"),
                       (action(10, "same", series=1, a=0, b=1, answer="maybe"), "yes or no")]:
        with pytest.raises(ReviewActionError, match=words) as info:
            state.apply(bad)
        assert f"action {bad.id}" in str(info.value)
        assert state.book == before


def test_queue_answers_and_not_a_character() -> None:
    actions = [action(1, "same", series=1, a=1, b=2, answer="no"),
               action(2, "belongs", series=1, unit=unit_id(W2, 0), identity=0, answer="no", other=1),
               action(3, "extra", series=1, members=[member_id("b", W1)], value=True),
               action(4, "same", series=1, a=0, b=2, answer="yes")]
    state = replay(labels_table(), actions)
    assert members_of(state, 1) == {"c", "d"}
    assert members_of(state, 0) == {"a", "e", "f"}
    assert members_of(state, 3) == {"b"} and (1, 3) in state.extra
    assert ("same", (1, 1), (1, 2)) in state.answered and ("belongs", unit_id(W2, 0)) in state.answered
    table = effective_columns(labels_table(), state)
    rows = {(r["char_key"], r["type"]): r for r in table.to_pylist()}
    assert rows[("b", "face")]["not_character"] and rows[("b", "body")]["reviewed_identity"] == 3
    assert rows[("u", "face")]["reviewed_identity"] is None  # unassigned rows stay unassigned


def test_corrections_groups_and_splits_become_constraints() -> None:
    state = replay(labels_table(), [action(1, "merge", series=1, identities=[0, 1]),
                                    action(2, "move", series=1, members=[member_id("d", W2)], to=None)])
    corrections = corrections_from_state(state)
    groups = {g["identity"]: set(g["keys"]) for g in corrections.groups}
    assert groups == {0: {"a", "b", "c"}, 3: {"d"}}
    assert corrections.apart == [(0, 1)]
    cannot, must = corrections.constraints([{"a"}, {"c"}, {"d"}, {"e"}])
    assert must[0, 1] and not must[0, 2] and not must[0, 3]
    assert cannot[0, 2] and cannot[1, 2] and not cannot[0, 3]  # unreviewed "e" is free
    assert corrections.constraints([{"e"}, {"f"}]) is None
    again = Corrections.from_dict(corrections.to_dict())
    assert again.group_of == corrections.group_of


def test_a_split_merged_back_later_is_no_cannot_link() -> None:
    state = replay(labels_table(), [action(1, "move", series=1, members=[member_id("d", W2)], to=None),
                                    action(2, "merge", series=1, identities=[0, 3])])
    assert corrections_from_state(state).apart == []


def test_stable_identities_keep_reviewed_ids_and_names() -> None:
    corrections = Corrections([{"series": 1, "identity": 7, "name": "Hero", "not_character": False,
                                "keys": ["a", "b"]}], [])
    ids, names = stable_identities(np.array([0, 0, 1, 2]), [{"a"}, {"b"}, {"c"}, {"d"}], corrections, 1)
    assert ids.tolist() == [7, 7, 0, 1] and names == {7: "Hero"}


def test_the_log_is_append_only_in_wal_mode_and_concurrent_writers_all_persist(tmp_path) -> None:
    path = str(tmp_path / "review.db")
    log = ReviewLog(path, labels_root="/labels")
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    def write(who: str) -> None:
        other = ReviewLog(path)
        for i in range(40):
            other.append("name", {"targets": [[1, 0]], "name": f"{who}{i}"}, "run", "model", reviewer=who)

    threads = [threading.Thread(target=write, args=(w,)) for w in ("x", "y", "z")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    actions = log.actions()
    assert len(actions) == 120 and [a.id for a in actions] == list(range(1, 121))
    assert {a.reviewer for a in actions} == {"x", "y", "z"} and all(a.at and a.labels_run == "run" for a in actions)
    assert log.meta()["labels_root"] == "/labels"
    with pytest.raises(ValueError, match="unknown review action"):
        log.append("rename", {}, "run", "model")


def test_open_log_refuses_a_missing_or_foreign_file(tmp_path) -> None:
    with pytest.raises(DataFormatError, match="not found"):
        open_log(str(tmp_path / "nope.db"), must_exist=True)
    foreign = tmp_path / "labels.csv"
    foreign.write_text("a,b\n")
    with pytest.raises(DataFormatError, match="not a SQLite review database"):
        open_log(str(foreign), must_exist=True)


# -- must-links in the constrained clustering -------------------------------------------------------------

def brute_force(d: np.ndarray, threshold: float, cannot: np.ndarray, must: list[tuple[int, int]]) -> np.ndarray:
    """Average linkage recomputed from the members at every step: must-link pairs first, then the closest
    allowed pair below the threshold (an independent reference of constrained_agglomerative)."""
    clusters = [{i} for i in range(len(d))]

    def find(i: int) -> int:
        return next(k for k, c in enumerate(clusters) if i in c)

    def allowed(a: set, b: set) -> bool:
        return not any(cannot[i, j] for i in a for j in b)

    for i, j in must:
        a, b = find(i), find(j)
        if a != b and allowed(clusters[a], clusters[b]):
            clusters[a] |= clusters.pop(b)
    while True:
        best = min(((np.mean([d[i, j] for i in clusters[a] for j in clusters[b]]), a, b)
                    for a, b in combinations(range(len(clusters)), 2) if allowed(clusters[a], clusters[b])),
                   default=(np.inf, 0, 0))
        if not best[0] < threshold:
            break
        clusters[best[1]] |= clusters.pop(best[2])
    labels = np.empty(len(d), int)
    for k, c in enumerate(clusters):
        labels[list(c)] = k
    return labels


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    return all((a[i] == a[j]) == (b[i] == b[j]) for i, j in combinations(range(len(a)), 2))


@pytest.mark.parametrize("seed", range(6))
def test_must_links_match_the_brute_force_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    points = rng.normal(size=(9, 3))
    d = np.linalg.norm(points[:, None] - points[None], axis=2)
    cannot = np.zeros((9, 9), bool)
    cannot[0, 1] = cannot[1, 0] = cannot[2, 5] = cannot[5, 2] = True
    pairs = [(0, 8), (3, 7), (1, 0), (6, 4)]  # (1, 0) is blocked: a cannot-link wins
    must = np.zeros((9, 9), bool)
    for i, j in pairs:
        must[min(i, j), max(i, j)] = True
    threshold = float(np.median(d))
    got = constrained_agglomerative(d, threshold, "average", cannot, must)
    order = sorted((min(i, j), max(i, j)) for i, j in pairs)  # the function takes them in row order
    assert same_partition(got, brute_force(d, threshold, cannot | cannot.T, order))
    assert got[0] == got[8] and got[3] == got[7] and got[4] == got[6] and got[0] != got[1]


def test_no_must_link_is_todays_clustering() -> None:
    rng = np.random.default_rng(1)
    points = rng.normal(size=(12, 4))
    d = np.linalg.norm(points[:, None] - points[None], axis=2)
    plain = constrained_agglomerative(d, 2.0)
    assert np.array_equal(plain, constrained_agglomerative(d, 2.0, must_link=np.zeros((12, 12), bool)))
    assert np.array_equal(plain, constrained_agglomerative(d, 2.0, must_link=None))
