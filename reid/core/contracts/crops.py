"""The crop job's output contract: ``<crops>/data/<shard>.parquet`` rows of :data:`CROP_SCHEMA` (one per face or
body box, JPEG bytes included), ``errors/<shard>.parquet``, ``_job.json`` (its parameters) and the seed's
per-crop JPEG layout; plus the pairing of a panel's boxes into character instances.

A shard is a block of ``pages_per_shard`` consecutive pages of one series (:func:`shard_id`), so every panel
lies in exactly one shard and a shard file holds whole panels.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from reid.core import io
from reid.core.contracts.manifest import ERROR_SCHEMA, FINGERPRINT, ShardedOutput
from reid.core.data.ids import page_panel
from reid.core.errors import DataFormatError

CROP_SCHEMA = pa.schema([
    ("instance_id", pa.string()), ("panel_id", pa.string()), ("series_id", pa.int64()),
    ("page", pa.int64()), ("panel", pa.int64()), ("type", pa.string()), ("index", pa.int64()),
    ("char_index", pa.int64()), ("box", pa.list_(pa.int32(), 4)), ("width", pa.int32()),
    ("height", pa.int32()), ("image", pa.binary()), ("shard", pa.string()),
])
FACE_DIR, BODY_DIR = "comics_crops_large_faces", "comics_crops"
INSTANCE_KEY_SEP = "#"


def shard_id(series_id: int, page: int, pages_per_shard: int) -> str:
    """Deterministic shard of a page: ``<series>-<block of pages>``."""
    return f"{series_id}-{page // pages_per_shard:05d}"


def series_of_shard(shard: str) -> int:
    """The series of a shard id made by :func:`shard_id` (``<series>-<block>``)."""
    return int(shard.split("-", 1)[0])


def shards_by_series(shards) -> dict[int, list[str]]:
    """Shard ids grouped by series, series in order and each series' shards sorted."""
    groups: dict[int, list[str]] = {}
    for shard in shards:
        groups.setdefault(series_of_shard(shard), []).append(shard)
    return {series: sorted(groups[series]) for series in sorted(groups)}


def crop_relpath(type_: str, series: int, page: int, panel: int, index: int) -> str:
    """The seed's layout: faces under comics_crops_large_faces/, bodies under comics_crops/.../bodies/."""
    if type_ == "face":
        return f"{FACE_DIR}/{series}/{page_panel(page, panel)}/{index}.jpg"
    return f"{BODY_DIR}/{series}/{page_panel(page, panel)}/bodies/{index}.jpg"


def crops_output(crops_root: str) -> ShardedOutput:
    return ShardedOutput(crops_root, "instance_id")


def committed_crop_files(crops_root: str) -> list[str]:
    """Data files of a finished crop job; refuses an unfinished one and one whose shard files were damaged
    after the commit (:meth:`ShardedOutput.verify`)."""
    output = crops_output(crops_root)
    if not output.is_complete():
        raise DataFormatError(crops_root, "crop output is incomplete or missing (no _SUCCESS): run jobs/crop.py")
    output.verify(remedy=f"; to redo it, delete its entry in {crops_root}/_manifest/ and {crops_root}/_SUCCESS, "
                         "then re-run jobs/crop.py with the same arguments (only that shard is cropped again)")
    return output.data_files()


# the crop job's parameters that change what its crops are (its paths do not)
CONTENT_PARAMS = ("face_scale", "pages_per_shard", "jpeg_quality")


def crop_job_params(crops_root: str) -> dict[str, Any]:
    """The parameters the crop job recorded (``pages_per_shard``, ``comics_root``, ``instances``, ...)."""
    return json.loads(io.read_text(io.join(crops_root, "_job.json")))


def crops_fingerprint(crops_root: str) -> dict[str, Any]:
    """What identifies a finished crop output's contents, wherever it lies: its row count and a sha256 over what
    the crops were made from and how (the crop job's input fingerprints and crop parameters, not its paths) and
    every committed shard's manifest entry (rows, error rows, the checksum of its ids). The same crops give the
    same fingerprint in every job that reads them; re-cropping into the same folder changes it."""
    import hashlib

    job = crop_job_params(crops_root)
    made_from = {k: v for k, v in job.items() if k.endswith(FINGERPRINT) or k in CONTENT_PARAMS}
    shards = [s.to_dict() for _, s in sorted(crops_output(crops_root).committed().items())]
    digest = hashlib.sha256(json.dumps({"job": made_from, "shards": shards}, sort_keys=True, default=str).encode())
    return {"rows": sum(int(s["rows"]) for s in shards), "sha256": digest.hexdigest()}


def read_crops(crops_root: str, columns: list[str] | None = None, verified: bool = False) -> pa.Table:
    """All committed crops of a finished crop job (refuses an unfinished or damaged one; ``verified``: the
    caller has checked it already, with :func:`committed_crop_files`, in this job)."""
    if not verified:
        committed_crop_files(crops_root)
    return crops_output(crops_root).read(columns)


def known_instance_ids(crops_root: str, verified: bool = False) -> set[str]:
    """Every instance id the crop job accepted from its input: cropped ones and those it could not crop (an
    instance with no crop is still an instance; a sequence may name it and have it masked). ``verified``: as
    for :func:`read_crops`."""
    output = crops_output(crops_root)
    ids = set(read_crops(crops_root, ["instance_id"], verified).column("instance_id").to_pylist())
    for path in output.error_files():
        ids.update(io.read_parquet(path, ["id"]).column("id").to_pylist())
    return ids


def read_shard_crops(crops_root: str, shard: str, columns: list[str] | None = None, filters: Any = None
                     ) -> pa.Table | None:
    """The crops of one shard (None when the shard has no committed crops: no instance on its pages)."""
    output = crops_output(crops_root)
    if not output.is_committed(shard):
        return None
    return io.read_parquet(output.data_path(shard), columns, filters)


def read_shard_errors(crops_root: str, shard: str) -> pa.Table:
    """The boxes of one committed shard that the crop job could not crop (:data:`ERROR_SCHEMA`)."""
    output = crops_output(crops_root)
    if not output.is_committed(shard):
        return ERROR_SCHEMA.empty_table()
    return io.read_parquet(output.errors_path(shard)).cast(ERROR_SCHEMA)


def pair_rows(table: pa.Table) -> list[dict[str, Any]]:
    """Crops of whole panels → character instances ``{key, panel_id, series_id, char_index, face, body,
    face_id, body_id}``; a box with ``char_index < 0`` is an instance of its own."""
    groups: dict[tuple[str, int, str], dict[str, Any]] = {}
    for row in table.select(["instance_id", "panel_id", "series_id", "type", "char_index", "image"]).to_pylist():
        solo = row["instance_id"] if row["char_index"] < 0 else ""
        key = (row["panel_id"], row["char_index"], solo)
        inst = groups.setdefault(key, {
            "key": f"{row['panel_id']}{INSTANCE_KEY_SEP}{row['char_index'] if not solo else solo}",
            "panel_id": row["panel_id"], "series_id": row["series_id"], "char_index": row["char_index"],
            "face": b"", "body": b"", "face_id": "", "body_id": ""})
        if inst[row["type"]]:
            # two faces (or bodies) share a char_index: keep the first, make the other its own instance
            key = (row["panel_id"], row["char_index"], row["instance_id"])
            inst = groups.setdefault(key, {**inst, "key": f"{inst['key']}{INSTANCE_KEY_SEP}{row['instance_id']}",
                                           "face": b"", "body": b"", "face_id": "", "body_id": ""})
        inst[row["type"]] = row["image"]
        inst[f"{row['type']}_id"] = row["instance_id"]
    return sorted(groups.values(), key=lambda r: r["key"])
