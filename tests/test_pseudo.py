"""Self-training's book-level sequences (reid/stages/label/pseudo.py, measured by tests/bench/self_training.py):
which window identities count as one character, and what a pseudo sequence may hold."""

from __future__ import annotations

import pyarrow as pa
import pytest

from reid.core.contracts.crops import known_instance_ids
from reid.core.contracts.labels import CENTROID_SCHEMA, window_panels
from reid.core.data.formats import RowPolicy, read_split, read_split_checked
from reid.core.data.ids import parse_panel_id
from reid.stages.label.pseudo import confident_links, pseudo_sequences, write_pseudo_sequences


def _centroids(rows: list[tuple[int, str, list[float], list[str]]]) -> pa.Table:
    """(series, window id, centre, member panels) per window identity; identity 0 in each window."""
    return pa.Table.from_pylist([
        {"series_id": s, "window_id": w, "identity": 0, "members": len(panels), "centroid": c,
         "member_keys": [f"k{i}" for i in range(len(panels))], "member_panels": panels}
        for s, w, c, panels in rows], schema=CENTROID_SCHEMA)


def test_links_only_close_identities_of_disjoint_windows_of_one_series() -> None:
    near, also_near, far = [1.0, 0.0, 0.0], [0.99, 0.1, 0.0], [0.0, 1.0, 0.0]
    table = _centroids([
        (1, "a", near, ["1_0_0", "1_0_1"]),
        (1, "b", also_near, ["1_3_0"]),          # another page, 0.1 away: one character
        (1, "c", [0.97, 0.2, 0.0], ["1_0_1", "1_0_2"]),  # shares panel 1_0_1 with "a": never linked to it
        (1, "d", far, ["1_5_0"]),                 # 1.41 away: another character
        (2, "e", near, ["2_0_0"]),                # identical centre, other series: never one character
        (1, "b", near, ["1_3_1"]),                # another identity of window "b": two characters by the window
    ])
    assert confident_links(table, 0.35) == [(0, 1), (0, 5), (1, 2), (2, 5)]
    assert confident_links(table, 0.05) == [(0, 5)]
    loose = confident_links(table, 1.5)
    assert (0, 3) in loose and not any(4 in pair for pair in loose) and (1, 5) not in loose


@pytest.mark.ray
def test_pseudo_sequences_of_a_label_run_are_valid_training_windows(review_labels, tiny_corpus) -> None:
    labels = str(review_labels["labels"])
    sequences_root = str(tiny_corpus / "data" / "comics_seq")
    held_out = {str(p) for split in ("validation", "test") for s in read_split(sequences_root, split) for p in s.panels}
    assert held_out
    everything = pseudo_sequences(labels, set(), max_distance=1.99)  # a random model: loose enough to link
    kept = pseudo_sequences(labels, held_out, max_distance=1.99)
    assert everything and kept and len(kept) < len(everything)
    for entry in kept:  # one character, two or more instances, on 4 distinct panels of one series
        assert len(entry["annotations"]) == 1 and len(entry["annotations"][0]["charInstances"]) >= 2
        panels = window_panels(entry["seq_id"])
        assert len(set(panels)) == 4 and len({parse_panel_id(p).series for p in panels}) == 1
    out = write_pseudo_sequences(labels, sequences_root, str(review_labels["root"] / "pseudo"), 1.99)
    assert out["sequences"] == len(kept)
    parsed, bad = read_split_checked(str(review_labels["root"] / "pseudo"), "train", RowPolicy(True, 0.0),
                                     known_instance_ids(str(review_labels["crops"])))
    assert not bad and len(parsed) == len(kept)
    assert not held_out & {str(p) for s in parsed for p in s.panels}
