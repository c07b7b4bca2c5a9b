"""Book-level positive pairs from a labels output: the model's own most confident cross-window links as training
sequences for a second fine-tuning round (self-training). A measured lever that is not part of the pipeline:
fine-tuning again with these sequences lowered window and series AMI on every seed of the inked demo
(``tests/bench/self_training.py``, docs/RESULTS.md).

Fine-tuning takes its positives from inside one annotated window (charIds are window-relative), so nothing in
the annotations says that a character on page 3 and on page 12 is one. The label job's window identities carry
that information where the model is sure of it: two window identities of one series, from windows with no
panel in common, whose centres lie within ``max_distance`` of each other (unit vectors, Euclidean). Each such
link gives one sequence, half its panels from each window, the two identities' instances labelled as one
character: positives that span the book. Chaining links into groups was measured and left out: one wrong link
merges two characters' groups (docs/RESULTS.md).

Panels of ``held_out`` (the validation and test sequences) never appear in a pseudo sequence: they stay unseen.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import numpy as np
import pyarrow as pa

from reid.core import io
from reid.core.contracts.labels import read_centroids, read_labels, window_id
from reid.core.data.formats import read_split, split_file

Unit = tuple[str, int]  # (window id, identity within the window)


def held_out_panels(sequences_root: str) -> set[str]:
    """The panels of the validation and test sequences under ``sequences_root``."""
    return {str(p) for split in ("validation", "test") if io.exists(split_file(sequences_root, split, "sequences"))
            for s in read_split(sequences_root, split) for p in s.panels}


def confident_links(centroids: pa.Table, max_distance: float) -> list[tuple[int, int]]:
    """Pairs of rows of ``centroids``: window identities of one series, from two windows that share no panel
    (two identities of one window are two characters by the window's own clustering), whose centres lie under
    ``max_distance``."""
    series = np.asarray(centroids["series_id"].to_pylist())
    vectors = np.asarray(centroids["centroid"].to_pylist(), np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    panels = [set(p) for p in centroids["member_panels"].to_pylist()]
    windows = centroids["window_id"].to_pylist()

    def apart(a: int, b: int) -> bool:
        return windows[a] != windows[b] and not panels[a] & panels[b]

    links = []
    for s in np.unique(series):
        rows = np.flatnonzero(series == s)
        dist = np.linalg.norm(vectors[rows, None] - vectors[None, rows], axis=-1)
        close = zip(*np.nonzero(np.triu(dist < max_distance, 1)), strict=True)
        links += [(int(rows[i]), int(rows[j])) for i, j in close if apart(rows[i], rows[j])]
    return links


def pseudo_sequences(labels_root: str, held_out: set[str], max_distance: float = 0.35,
                     window_size: int = 4) -> list[dict[str, Any]]:
    """COMICS sequences (``seq_id``, ``annotations``), one per confident link (:func:`confident_links`): half
    the panels from each of the two windows, the instances of the two window identities labelled as one
    character. Panels of ``held_out`` are left out."""
    labels = read_labels(labels_root, ["window_id", "identity", "char_key", "panel_id", "type", "instance_id",
                                       "shard"], include_unassigned=False)
    centroids = read_centroids(labels_root, sorted(set(labels["shard"].to_pylist())))
    instances: dict[Unit, dict[str, dict[str, dict[str, str]]]] = defaultdict(lambda: defaultdict(dict))
    for r in labels.drop_columns(["shard"]).to_pylist():
        if r["panel_id"] not in held_out:
            instances[(r["window_id"], r["identity"])][r["panel_id"]].setdefault(r["char_key"], {})[r["type"]] = \
                r["instance_id"]
    units = list(zip(centroids["window_id"].to_pylist(), centroids["identity"].to_pylist(), strict=True))
    out: dict[str, dict[str, Any]] = {}
    for a, b in confident_links(centroids, max_distance):
        sequence = _joined_sequence(instances.get(units[a], {}), instances.get(units[b], {}), window_size)
        if sequence and sequence["seq_id"] not in out:
            out[sequence["seq_id"]] = sequence
    return [out[k] for k in sorted(out)]


def _joined_sequence(a: dict[str, dict[str, dict[str, str]]], b: dict[str, dict[str, dict[str, str]]],
                     window_size: int) -> dict[str, Any] | None:
    """One sequence from the panels of two window identities (panel → char key → {type: instance id}): up to
    half the panels from each, topped up from either to ``window_size``; None when they hold fewer panels or
    the two share one."""
    if set(a) & set(b) or len(a) + len(b) < window_size:
        return None
    half = window_size // 2
    take_a = sorted(a)[:max(half, window_size - len(b))]
    panels = sorted(take_a + sorted(b)[:window_size - len(take_a)])
    keys = {key: types for side in (a, b) for panel in panels for key, types in side.get(panel, {}).items()}
    return {"seq_id": window_id(panels), "annotations": [
        {"charId": "pseudo", "charInstances": [dict(sorted(t.items())) for _, t in sorted(keys.items())]}]}


def write_pseudo_sequences(labels_root: str, sequences_root: str, out_dir: str, max_distance: float = 0.35
                           ) -> dict[str, Any]:
    """Write ``<out_dir>/train_sequences.json`` (for ``jobs/finetune.py --extra-sequences``); returns its path
    and counts."""
    sequences = pseudo_sequences(labels_root, held_out_panels(sequences_root), max_distance)
    path = io.join(out_dir, "train_sequences.json")
    io.makedirs(out_dir)
    io.write_text_atomic(path, json.dumps(sequences, indent=1))
    return {"path": path, "sequences": len(sequences), "max_distance": max_distance,
            "instances": sum(len(a["charInstances"]) for s in sequences for a in s["annotations"])}
