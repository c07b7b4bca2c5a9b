"""The label job's output contract: ``<labels>/data/<shard>.parquet`` rows of :data:`LABEL_SCHEMA` (one per
character box and window), ``errors/<shard>.parquet`` (boxes that could not be labelled: *unassigned*, with the
reason), the sharded-output manifest (:mod:`reid.core.contracts.manifest`), ``metrics.json``; and the pass-1
intermediate ``_windows/`` (the same layout, plus ``centroids/`` and ``embeddings/`` sidecars per shard); with a
ground truth, ``_figures/<series>.json`` (each series's scores, written by the task that finished it).

Ids: a window id is its panel ids joined by ``+`` (the annotated sequences' ``seq_id`` format,
:mod:`reid.core.data.ids`); a row id is ``<instance_id>@<window_id>`` (an instance has one row per window it lies in).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from reid.core import io
from reid.core.contracts.manifest import ShardedOutput
from reid.core.data.ids import parse_instance_id, seq_id, seq_panel_ids
from reid.core.errors import DataFormatError

ROW_ID_SEP = "@"
UNASSIGNED = "unassigned"
LABEL_SCHEMA = pa.schema([
    ("row_id", pa.string()), ("instance_id", pa.string()), ("type", pa.string()), ("panel_id", pa.string()),
    ("series_id", pa.int64()), ("window_id", pa.string()), ("char_key", pa.string()),
    ("identity", pa.int64()), ("series_identity", pa.int64()), ("distance", pa.float32()),
    ("box", pa.list_(pa.int32(), 4)), ("model", pa.string()), ("model_sha256", pa.string()),
    ("run_id", pa.string()), ("shard", pa.string()),
])
CENTROID_SCHEMA = pa.schema([("series_id", pa.int64()), ("window_id", pa.string()), ("identity", pa.int64()),
                             ("members", pa.int32()), ("centroid", pa.list_(pa.float32())),
                             # the character instances of the window identity and their panels (cannot-link)
                             ("member_keys", pa.list_(pa.string())), ("member_panels", pa.list_(pa.string()))])
EMBEDDING_SCHEMA = pa.schema([("char_key", pa.string()), ("face_id", pa.string()), ("body_id", pa.string()),
                              ("embedding", pa.list_(pa.float32()))])


def row_id(instance_id: str, window_id: str) -> str:
    return f"{instance_id}{ROW_ID_SEP}{window_id}"


def split_row_id(row_id_: str) -> tuple[str, str]:
    """(instance id, window id) of a row id made by :func:`row_id`."""
    instance_id, window = row_id_.split(ROW_ID_SEP, 1)
    return instance_id, window


def window_panels(window_id: str) -> list[str]:
    """The panel ids of a window id."""
    return seq_panel_ids(window_id)


def windows_root(out: str) -> str:
    return io.join(out, "_windows")


def _unassigned_rows(errors: pa.Table) -> pa.Table:
    """Error rows of a labels output → label rows with ``status`` unassigned and the reason."""
    ids = errors.column("id").to_pylist()
    instance_ids, window_ids = zip(*(split_row_id(i) for i in ids), strict=True) if ids else ((), ())
    parsed = [parse_instance_id(i) for i in instance_ids]
    return pa.table({
        "row_id": ids, "instance_id": list(instance_ids), "type": [p.type for p in parsed],
        "panel_id": [str(p.panel_id) for p in parsed], "series_id": pa.array([p.series for p in parsed], pa.int64()),
        "window_id": list(window_ids), "shard": errors.column("shard"),
        "status": [UNASSIGNED] * len(ids), "reason": errors.column("reason"),
    })


def iter_labels(labels_root: str, columns: list[str] | None = None,
                include_unassigned: bool = True) -> Iterator[tuple[str, pa.Table]]:
    """(shard, table) for every committed shard of a labels output, one shard in memory at a time.

    Rows get ``status`` ("assigned" | "unassigned") and ``reason`` ("" when assigned); unassigned rows
    have null identities. ``columns`` selects label columns (status and reason are always added).
    """
    output = ShardedOutput(labels_root, "row_id")
    for shard in sorted(output.committed()):
        rows = io.read_parquet(output.data_path(shard), columns)
        rows = rows.append_column("status", pa.array(["assigned"] * rows.num_rows, pa.string()))
        rows = rows.append_column("reason", pa.array([""] * rows.num_rows, pa.string()))
        if include_unassigned:
            errors = _unassigned_rows(io.read_parquet(output.errors_path(shard)))
            keep = [c for c in errors.column_names if c in rows.column_names]
            rows = pa.concat_tables([rows, errors.select(keep)], promote_options="default")
        yield shard, rows


def read_labels(labels_root: str, columns: list[str] | None = None, include_unassigned: bool = True) -> pa.Table:
    """The whole labels table (small outputs; stream big ones with :func:`iter_labels`)."""
    output = ShardedOutput(labels_root, "row_id")
    if not output.is_complete():
        raise DataFormatError(labels_root, "labels output is incomplete (no _SUCCESS): re-run jobs/label.py")
    tables = [t for _, t in iter_labels(labels_root, columns, include_unassigned)]
    if not tables:
        return LABEL_SCHEMA.empty_table()
    return pa.concat_tables(tables, promote_options="default")


def window_id(panel_ids: list[str]) -> str:
    """The id of the window made of ``panel_ids`` (in order)."""
    return seq_id(panel_ids)


def labels_output(labels_root: str) -> ShardedOutput:
    """The final labels output (pass 2)."""
    return ShardedOutput(labels_root, "row_id")


def windows_output(labels_root: str) -> ShardedOutput:
    """Pass 1's output under ``<labels>/_windows`` (window identities; series identities still empty)."""
    return ShardedOutput(windows_root(labels_root), "row_id")


def read_centroids(labels_root: str, shards: list[str]) -> pa.Table:
    """The window-identity centres (:data:`CENTROID_SCHEMA`) of pass 1's ``shards``."""
    output = windows_output(labels_root)
    tables = [io.read_parquet(output.sidecar_path("centroids", s)) for s in sorted(shards)]
    return pa.concat_tables(tables) if tables else CENTROID_SCHEMA.empty_table()


QUALITY_FILE = "quality.json"
"""Per-series quality against ground truth, when the job was given some: a list of {series, identities,
true_identities, bcubed_f1, bcubed_precision, bcubed_recall, AMI} (one per series), under the labels root."""


def read_quality(labels_root: str) -> list[dict] | None:
    """The per-series quality of a labels output (None when the job had no ground truth)."""
    import json

    path = io.join(labels_root, QUALITY_FILE)
    return json.loads(io.read_text(path)) if io.exists(path) else None


def read_embeddings(labels_root: str, shard: str) -> dict[str, np.ndarray]:
    """char_key → embedding of one shard (written with ``--sequences`` or ``--save-embeddings``)."""
    table = io.read_parquet(windows_output(labels_root).sidecar_path("embeddings", shard), ["char_key", "embedding"])
    return {k: np.asarray(v, np.float32) for k, v in zip(table["char_key"].to_pylist(),
                                                         table["embedding"].to_pylist(), strict=True)}
