"""Exports of a review: the effective labels (Parquet, CSV) and the reviewed identities as labelled sequences."""

from __future__ import annotations

import csv
import io as pyio
import json
from collections import defaultdict
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from reid.core import io
from reid.core.contracts.labels import read_labels, window_id, window_panels
from reid.core.contracts.review import open_log
from reid.core.corrections import effective_columns, replay
from reid.stages.review.corpus import applied_names, default_db

CSV_COLUMNS = ["row_id", "instance_id", "type", "panel_id", "series_id", "window_id", "char_key", "identity",
               "series_identity", "reviewed_identity", "name", "not_character", "reviewed", "status", "reason"]


def effective_labels(labels_root: str, db: str = "") -> pa.Table:
    """Labels + review: every label row (unassigned ones too) with ``reviewed_identity`` (the series identity
    after the review log is replayed), ``name``, ``not_character`` and ``reviewed`` (its identity was touched).
    The labels' Parquet is only read; a missing log means no action."""
    db = db or default_db(labels_root)
    labels = read_labels(labels_root)
    actions = open_log(db, must_exist=True).actions() if io.exists(db) else []
    return effective_columns(labels, replay(labels, actions, applied_names(labels_root)))


def export_labels(labels_root: str, out: str, db: str = "") -> list[str]:
    """Write the effective labels to ``out`` (.parquet, .csv, or both without a suffix); returns the files."""
    table = plain_boxes(effective_labels(labels_root, db))
    targets = [out] if out.endswith((".parquet", ".csv")) else [f"{out}.parquet", f"{out}.csv"]
    for path in targets:
        if path.endswith(".parquet"):
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink)
            io.write_bytes_atomic(path, sink.getvalue().to_pybytes())
        else:
            io.write_text_atomic(path, _csv(table))
    return targets


def plain_boxes(table: pa.Table) -> pa.Table:
    """``box`` as a variable-size list: unassigned rows have none, and a fixed-size list column with null rows
    does not read back from Parquet."""
    box = table.schema.field("box")
    if not pa.types.is_fixed_size_list(box.type):
        return table
    return table.set_column(table.schema.get_field_index("box"), "box", table["box"].cast(pa.list_(box.type.value_type)))


def _csv(table: pa.Table) -> str:
    buffer = pyio.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    columns = [table[c].to_pylist() for c in CSV_COLUMNS]
    for row in zip(*columns, strict=True):
        writer.writerow(["" if v is None else v for v in row])
    return buffer.getvalue()


def _reviewed_rows(table: pa.Table) -> list[dict[str, Any]]:
    """The rows of reviewed, real characters, each with its ``char_id`` (``<series>_<reviewed identity>``)."""
    rows = table.filter(pa.compute.fill_null(table["reviewed"], False))
    rows = rows.filter(pa.compute.invert(pa.compute.fill_null(rows["not_character"], False)))
    return [{**r, "char_id": f"{r['series_id']}_{r['reviewed_identity']}"} for r in rows.select(
        ["window_id", "panel_id", "char_key", "type", "instance_id", "series_id", "reviewed_identity"]).to_pylist()]


def _sequence(seq_id: str, by_char: dict[str, dict[str, dict[str, str]]]) -> dict[str, Any]:
    """A COMICS sequence entry from {charId: {char key: {type: instance id}}}, in a stable order."""
    return {"seq_id": seq_id, "annotations": [
        {"charId": char_id, "charInstances": [dict(sorted(inst.items())) for _, inst in sorted(keys.items())]}
        for char_id, keys in sorted(by_char.items())]}


def reviewed_sequences(table: pa.Table, window_size: int = 4, min_characters: int = 1) -> list[dict[str, Any]]:
    """Windows holding instances of reviewed identities → COMICS sequences (``seq_id``, ``annotations`` of
    ``charId`` and ``charInstances`` {face, body}). Only reviewed, real characters are labelled: the charId is
    ``<series>_<reviewed identity>``, so one character keeps one id in every window of its book."""
    chars: dict[str, dict[str, dict[str, dict[str, str]]]] = defaultdict(lambda: defaultdict(dict))
    for r in _reviewed_rows(table):
        chars[r["window_id"]][r["char_id"]].setdefault(r["char_key"], {})[r["type"]] = r["instance_id"]
    return [_sequence(window, by_char) for window, by_char in sorted(chars.items())
            if len(window_panels(window)) == window_size and len(by_char) >= min_characters]


def book_sequences(table: pa.Table, window_size: int = 4, per_identity: int = 8) -> list[dict[str, Any]]:
    """Sequences that join two windows of one reviewed character: half the panels from one window where it is
    seen, half from another (a page or more apart where the book allows), every reviewed character of those
    panels labelled as in :func:`reviewed_sequences`.

    Fine-tuning takes its positive pairs from inside one sequence, so window sequences alone teach nothing about
    the same character across a book; what a reviewer merged across windows is exactly that. Up to
    ``per_identity`` window pairs per reviewed identity; panel ids need only be of one series (docs/DATA.md)."""
    windows_of: dict[tuple[int, int], dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    in_panel: dict[str, dict[str, dict[str, dict[str, str]]]] = defaultdict(lambda: defaultdict(dict))
    for r in _reviewed_rows(table):
        panels = windows_of[(r["series_id"], r["reviewed_identity"])][r["window_id"]]
        if r["panel_id"] not in panels:
            panels.append(r["panel_id"])
        in_panel[r["panel_id"]][r["char_id"]].setdefault(r["char_key"], {})[r["type"]] = r["instance_id"]
    half = window_size // 2
    out: dict[str, dict[str, Any]] = {}
    for _, windows in sorted(windows_of.items()):
        ordered = sorted(windows)
        for i in range(min(per_identity, len(ordered)) if len(ordered) > 1 else 0):
            a, b = ordered[i], ordered[(i + len(ordered) // 2) % len(ordered)]
            if a == b:
                continue
            panels = list(dict.fromkeys(sorted(windows[a])[:half] + sorted(windows[b])[:window_size - half]))
            panels = (panels + [p for p in window_panels(a) + window_panels(b) if p not in panels])[:window_size]
            seq_id = window_id(panels)
            if len(panels) < window_size or seq_id in out:
                continue
            by_char: dict[str, dict[str, dict[str, str]]] = defaultdict(dict)
            for panel in panels:
                for char_id, keys in in_panel[panel].items():
                    by_char[char_id].update(keys)
            out[seq_id] = _sequence(seq_id, by_char)
    return [out[k] for k in sorted(out)]


def export_sequences(labels_root: str, out_dir: str, db: str = "", split: str = "train", window_size: int = 4,
                     min_characters: int = 1, across_windows: int = 8) -> dict[str, Any]:
    """Write ``<out_dir>/<split>_sequences.json`` from the effective labels: the reviewed windows and up to
    ``across_windows`` sequences per reviewed character joining two of its windows (:func:`book_sequences`);
    returns its path and counts."""
    table = effective_labels(labels_root, db)
    window = reviewed_sequences(table, window_size, min_characters)
    book = book_sequences(table, window_size, across_windows) if across_windows else []
    sequences = window + book
    path = io.join(out_dir, f"{split}_sequences.json")
    io.makedirs(out_dir)
    io.write_text_atomic(path, json.dumps(sequences, indent=1))
    return {"path": path, "sequences": len(sequences), "book_sequences": len(book),
            "instances": sum(len(a["charInstances"]) for s in sequences for a in s["annotations"])}
