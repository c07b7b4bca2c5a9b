"""Label stage: identities for every character instance of every panel window of the corpus (DESIGN §1, §2, §5).

Three passes, each exactly once and resumable (a killed job re-run finishes only what is missing):

1. *Windows* (Ray Data): one work unit per crops shard (a block of whole pages of one series). CPU tasks
   read the unit's crops, pair them into character instances (a face and/or a body,
   :func:`reid.train.data.pair_rows`), decode them and apply the eval transform's geometry (uint8, so the
   decoding scales with the cluster's CPUs and not with the GPU actor). An actor pool (the model loaded once
   per actor, on a GPU when the cluster has them) embeds each character instance once, in batches, clusters
   every window with the assigner (:func:`reid.label_window.cluster_window`) and commits the unit under
   ``<out>/_windows/`` (:class:`reid.shards.ShardedOutput`) with two sidecars written before the commit:
   ``centroids/<shard>.parquet`` (one centre per window identity) and, with ``--sequences`` or
   ``--save-embeddings``, ``embeddings/<shard>.parquet`` (one per character instance).
2. *Series* (Ray tasks, one per series): link the window identities of a series into series-level
   identities by clustering their centres (:func:`reid.assign.link_windows`; no re-embedding), then commit
   every shard of the series again under ``<out>/`` with ``series_identity`` filled in. Linking is a pure
   function of the committed centres, so a re-run after a kill recomputes the same links.
3. *Finish* (driver): check the counts and ids add up, write ``_SUCCESS``, evaluate against ground truth
   when there is some, write ``metrics.json`` and the visual report (:mod:`reid.report`), log to MLflow.

Windows: by default every page with instances is cut into windows of ``window_size`` consecutive panel
numbers every ``stride`` panels, from panel 0 until a window reaches the page's last panel with instances
(so the last window of a page may be shorter); windows with no instance are skipped. With ``--sequences``
the windows are exactly the annotated ones. A window id is its panel ids joined by ``+`` (the seq_id
format). With overlapping windows (``stride < window_size``, or annotated sequences) an instance belongs to
several windows: **the output has one row per (instance, window)**, ``row_id = <instance_id>@<window_id>``.

Output (``<out>/``, read it with :func:`read_labels`): ``data/<shard>.parquet`` rows of :data:`LABEL_SCHEMA`
(``identity``: within the window, 0..K-1; ``series_identity``: within the series; ``distance``: to the
identity's centre), and ``errors/<shard>.parquet``: one row per (instance, window) that could not be
labelled (crop missing or failed in the crop job, or crop bytes that do not decode) with the reason. Those
are *unassigned*, never dropped: data + errors hold every (instance, window) exactly once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import pickle
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from reid import config, io
from reid.assign import LINKAGES, METRICS, link_windows
from reid.crop import CROP_SCHEMA, FAULT_INJECTION_PAUSE_S, shard_id
from reid.data import formats
from reid.data.ids import parse_instance_id, parse_panel_id
from reid.errors import CheckpointError, ConfigError, DataFormatError
from reid.images import DEFAULT_MAX_PIXELS, decode_image
from reid.shards import (
    ERROR_SCHEMA,
    ShardedOutput,
    ShardSummary,
    error_table,
    summaries_batch,
    table_to_parquet_bytes,
)

log = logging.getLogger(__name__)

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
                             ("members", pa.int32()), ("centroid", pa.list_(pa.float32()))])
EMBEDDING_SCHEMA = pa.schema([("char_key", pa.string()), ("face_id", pa.string()), ("body_id", pa.string()),
                              ("embedding", pa.list_(pa.float32()))])
MODEL_FIELDS = ("arch", "face_size", "body_size", "embed_dim")
PROGRESS_LOG_S = 10.0


@dataclass(frozen=True)
class LabelConfig:
    """Label every character instance of a cropped corpus with window and series identities."""

    model: str = field(default="runs/train/finetune/final/model.pt",
                       metadata={"help": "Re-ID checkpoint (model.pt of jobs/finetune.py)"})
    crops: str = field(default="runs/demo/crops", metadata={"help": "output folder of jobs/crop.py"})
    out: str = field(default="runs/demo/labels", metadata={"help": "output folder or URI (LABELS)"})
    comics_root: str = field(default="", metadata={"help": "panel images for the report (default: the "
                                                           "crop job's comics_root)"})
    instances: str = field(default="", metadata={"help": "optional check: the instance CSV the crops "
                                                         "were made from"})
    sequences: str = field(default="", metadata={"help": "<split>_sequences.json: label exactly these "
                                                         "windows and evaluate against their charIds"})
    ground_truth: str = field(default="", metadata={"help": "CSV of instance_id,identity (synthetic corpus): "
                                                            "also score windows and series against it"})
    window_size: int = field(default=4, metadata={"help": "consecutive panels per window"})
    stride: int = field(default=4, metadata={"help": "panels between window starts (= window_size: each "
                                                     "panel in one window)"})
    threshold: float = field(default=0.82, metadata={"help": "assigner distance threshold per window"})
    metric: str = "euclidean"
    linkage: str = "average"
    link_threshold: float = field(default=0.82, metadata={"help": "threshold linking window identities "
                                                                  "across a series"})
    arch: str | None = field(default=None, metadata={"help": "if set, must match the checkpoint"})
    face_size: int | None = field(default=None, metadata={"help": "if set, must match the checkpoint"})
    body_size: int | None = field(default=None, metadata={"help": "if set, must match the checkpoint"})
    embed_dim: int | None = field(default=None, metadata={"help": "if set, must match the checkpoint"})
    batch_size: int = field(default=128, metadata={"help": "character instances per forward pass"})
    num_cpus_per_actor: float = field(default=1.0, metadata={"help": "Ray CPUs per embedding actor (equal to "
                                                                     "--num-cpus-per-task on CPUs: decoding "
                                                                     "then runs inside the actors)"})
    num_gpus_per_actor: float | None = field(default=None, metadata={"help": "GPUs per actor (default: 1 "
                                                                             "when the cluster has GPUs)"})
    torch_threads: int = field(default=0, metadata={"help": "threads of an actor's forward pass (0: its CPUs "
                                                            "rounded up; Ray would give it floor(CPUs))"})
    max_actors: int = field(default=0, metadata={"help": "actor pool size (0: one per GPU, else as many as "
                                                         "the CPUs hold)"})
    num_cpus_per_task: float = field(default=1.0, metadata={"help": "Ray CPUs per decoding or linking task"})
    max_image_pixels: int = field(default=DEFAULT_MAX_PIXELS, metadata={"help": "decode limit of a crop"})
    save_embeddings: bool = field(default=False, metadata={"help": "keep every instance's embedding "
                                                                   "(always on with --sequences)"})
    report_windows: int = field(default=8, metadata={"help": "windows drawn in the report (0: no report)"})
    report_series: int = field(default=4, metadata={"help": "series with an identity gallery"})
    report_members: int = field(default=8, metadata={"help": "crops per identity in a gallery"})
    ray_address: str | None = field(default=None, metadata={"help": "Ray cluster (default: RAY_ADDRESS or local)"})
    ray_num_cpus: int | None = field(default=None, metadata={"help": "CPUs of a locally started Ray"})
    mlflow_uri: str | None = field(default=None, metadata={"help": "tracking URI (default: MLFLOW_TRACKING_URI "
                                                                  "or sqlite runs/mlflow.db)"})
    experiment: str = "comic-reid"
    name: str = field(default="label", metadata={"help": "run name; the MLflow run key"})
    fail_after_shards: int = field(default=0, metadata={"help": "fault injection for tests: the driver dies "
                                                                "(os._exit) after this many window shards; "
                                                                "actors pause 1 s before each commit"})

    def __post_init__(self) -> None:
        config.check(bool(self.model), "--model is required")
        config.check(self.window_size >= 1, f"window_size must be >= 1, got {self.window_size}")
        config.check(self.stride >= 1, f"stride must be >= 1, got {self.stride}")
        config.check(self.threshold > 0 and self.link_threshold > 0, "threshold and link_threshold must be > 0")
        config.check(self.metric in METRICS, f"metric must be one of {METRICS}, got {self.metric!r}")
        config.check(self.linkage in LINKAGES, f"linkage must be one of {LINKAGES}, got {self.linkage!r}")
        config.check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        config.check(self.num_cpus_per_actor > 0 and self.num_cpus_per_task > 0, "CPUs per actor/task must be > 0")
        config.check(self.num_gpus_per_actor is None or self.num_gpus_per_actor >= 0, "num_gpus_per_actor >= 0")
        config.check(self.max_actors >= 0, "max_actors must be >= 0")
        config.check(self.torch_threads >= 0, f"torch_threads must be >= 0, got {self.torch_threads}")
        for name in ("report_windows", "report_series", "report_members", "fail_after_shards"):
            config.check(getattr(self, name) >= 0, f"{name} must be >= 0")

    @property
    def keep_embeddings(self) -> bool:
        return self.save_embeddings or bool(self.sequences)


# -- reading ----------------------------------------------------------------------------------------------

def _read(path: str, columns: list[str] | None = None, filters: Any = None) -> pa.Table:
    fs, p = io.resolve(path)
    return pq.read_table(p, filesystem=fs, columns=columns, filters=filters)


def row_id(instance_id: str, window_id: str) -> str:
    return f"{instance_id}{ROW_ID_SEP}{window_id}"


def _unassigned_rows(errors: pa.Table) -> pa.Table:
    """Error rows of a labels output → label rows with ``status`` unassigned and the reason."""
    ids = errors.column("id").to_pylist()
    instance_ids, window_ids = zip(*(i.split(ROW_ID_SEP, 1) for i in ids), strict=True) if ids else ((), ())
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
        rows = _read(io.join(labels_root, "data", f"{shard}.parquet"), columns)
        rows = rows.append_column("status", pa.array(["assigned"] * rows.num_rows, pa.string()))
        rows = rows.append_column("reason", pa.array([""] * rows.num_rows, pa.string()))
        if include_unassigned:
            errors = _unassigned_rows(_read(io.join(labels_root, "errors", f"{shard}.parquet")))
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


# -- windows ----------------------------------------------------------------------------------------------

def sliding_windows(panel_ids: Iterator[str] | list[str], window_size: int, stride: int) -> list[str]:
    """Window ids over the pages of ``panel_ids`` (the panels that have instances); see the module doc."""
    pages: dict[tuple[int, int], set[int]] = defaultdict(set)
    for text in panel_ids:
        p = parse_panel_id(text)
        pages[(p.series, p.page)].add(p.panel)
    windows = []
    for (series, page), present in sorted(pages.items()):
        n = max(present) + 1
        start = 0
        while start < n:
            numbers = range(start, min(start + window_size, n))
            if present.intersection(numbers):
                windows.append("+".join(f"{series}_{page}_{k}" for k in numbers))
            if start + window_size >= n:
                break
            start += stride
    return windows


def window_panels(window_id: str) -> list[str]:
    return window_id.split("+")


def plan_items(cfg: LabelConfig, crops: ShardedOutput, pages_per_shard: int) -> list[dict[str, Any]]:
    """Work items of pass 1: ``{"shard", "windows"}``; windows are listed only with ``--sequences``."""
    if not cfg.sequences:
        return [{"shard": s, "windows": []} for s in sorted(crops.committed())]
    by_shard: dict[str, list[str]] = defaultdict(list)
    for seq in formats.read_sequences(cfg.sequences, panels_per_window=cfg.window_size):
        first = seq.panels[0]
        by_shard[shard_id(first.series, first.page, pages_per_shard)].append(seq.seq_id)
    if not by_shard:
        raise DataFormatError(cfg.sequences, "no sequence to label")
    return [{"shard": s, "windows": sorted(w)} for s, w in sorted(by_shard.items())]


# -- pass 1: embed and cluster one shard ------------------------------------------------------------------

@dataclass
class ShardInput:
    """The crops a work unit needs: ok crops (CROP_SCHEMA rows) and crop errors, of the window panels."""

    crops: pa.Table
    crop_errors: pa.Table
    windows: list[str]


def read_shard_input(crops_root: str, item: dict[str, Any], pages_per_shard: int, window_size: int,
                     stride: int) -> ShardInput:
    """Crops of a work unit: its own crops shard (sliding windows, computed here), or the shards that the
    panels of its annotated windows lie in."""
    crops_out = ShardedOutput(crops_root, "instance_id")
    windows = list(item["windows"])
    panels = {p for w in windows for p in window_panels(w)}
    shards = sorted({shard_id(q.series, q.page, pages_per_shard) for q in map(parse_panel_id, panels)}) \
        if windows else [item["shard"]]
    tables, errors = [CROP_SCHEMA.empty_table()], [ERROR_SCHEMA.empty_table()]
    for s in shards:
        if crops_out.is_committed(s):  # else: no instance on these pages
            tables.append(_read(io.join(crops_root, "data", f"{s}.parquet")).cast(CROP_SCHEMA))
            errors.append(_read(io.join(crops_root, "errors", f"{s}.parquet")).cast(ERROR_SCHEMA))
    crops, crop_errors = pa.concat_tables(tables), pa.concat_tables(errors)
    error_panels = [str(parse_instance_id(i).panel_id) for i in crop_errors["id"].to_pylist()]
    if windows:
        crops = crops.filter(pc.is_in(crops["panel_id"], pa.array(sorted(panels), pa.string())))
        crop_errors = crop_errors.filter(pa.array([p in panels for p in error_panels], pa.bool_()))
    else:
        windows = sliding_windows(crops["panel_id"].to_pylist() + error_panels, window_size, stride)
    return ShardInput(crops, crop_errors, windows)


@dataclass
class PreparedShard:
    """A work unit ready for the model: its crops decoded and preprocessed (uint8, see
    :class:`reid.label_window.CropPreprocessor`), one entry per character instance."""

    shard: str
    unit: ShardInput
    characters: list[dict[str, Any]]  # pair_rows rows without their image bytes
    images: dict[str, np.ndarray]  # face (N,3,F,F), body (N,3,B,B) uint8, face_mask, body_mask (N,)
    bad_boxes: dict[str, str]  # instance id -> why its crop does not decode


def prepare_shard(cfg: LabelConfig, item: dict[str, Any], face_size: int, body_size: int,
                  pages_per_shard: int, transform: dict[str, Any] | None = None) -> PreparedShard:
    """Read, pair, decode and preprocess a work unit's crops (CPU; no side effects, safe to retry)."""
    from reid.label_window import CropPreprocessor
    from reid.train.data import pair_rows

    unit = read_shard_input(cfg.crops, item, pages_per_shard, cfg.window_size, cfg.stride)
    source = io.join(cfg.crops, "data")
    bad: dict[str, str] = {}
    characters, faces, bodies = [], [], []
    for char in pair_rows(unit.crops):
        face, body = (_decode(char, m, source, cfg.max_image_pixels, bad) for m in ("face", "body"))
        if face is None and body is None:
            continue  # neither crop decodes: all its boxes are unassigned
        characters.append({k: v for k, v in char.items() if k not in ("face", "body")})
        faces.append(face)
        bodies.append(body)
    images = CropPreprocessor(face_size, body_size, transform)(faces, bodies)  # the model's transform spec
    unit.crops = unit.crops.drop_columns(["image"])  # decoded now: don't ship the JPEG bytes to the actor
    return PreparedShard(item["shard"], unit, characters, images, bad)


def _decode(char: dict[str, Any], modality: str, source: str, max_pixels: int, bad: dict[str, str]):
    data, box_id = char[modality], char[f"{modality}_id"]
    if not data:
        return None
    try:
        return decode_image(data, f"{source}#{box_id}", max_pixels)
    except DataFormatError as exc:
        bad[box_id] = f"crop does not decode: {exc.reason}"
        return None


def label_rows(prepared: PreparedShard, embeddings: np.ndarray, cfg: LabelConfig, model_id: dict[str, str]
               ) -> tuple[pa.Table, pa.Table, pa.Table]:
    """Cluster every window of a work unit → (label rows, error rows, centroid rows)."""
    from reid.label_window import cluster_window

    unit, shard, bad = prepared.unit, prepared.shard, prepared.bad_boxes
    by_panel: dict[str, list[int]] = defaultdict(list)
    for i, char in enumerate(prepared.characters):
        by_panel[char["panel_id"]].append(i)
    boxes = dict(zip(unit.crops["instance_id"].to_pylist(), unit.crops["box"].to_pylist(), strict=True))
    unusable = [(e["id"], e["stage"], e["source"], e["reason"]) for e in unit.crop_errors.to_pylist()]
    embedded = {c[f"{m}_id"] for c in prepared.characters for m in ("face", "body")}
    unusable += [(i, "label", f"{cfg.crops}#{i}", reason) for i, reason in sorted(bad.items()) if i not in embedded]
    unusable_by_panel: dict[str, list[tuple]] = defaultdict(list)
    for entry in unusable:
        unusable_by_panel[str(parse_instance_id(entry[0]).panel_id)].append(entry)
    rows, errors, centroids = [], [], []
    for window_id in unit.windows:
        panels = window_panels(window_id)
        errors += [{"id": row_id(i, window_id), "shard": shard, "stage": stage, "source": source, "reason": reason}
                   for p in panels for i, stage, source, reason in unusable_by_panel.get(p, [])]
        members = [i for p in panels for i in by_panel.get(p, [])]
        if not members:
            continue
        labels, centres, distances = cluster_window(embeddings[members], cfg.threshold, cfg.metric, cfg.linkage)
        series = prepared.characters[members[0]]["series_id"]
        centroids += [{"series_id": series, "window_id": window_id, "identity": k,
                       "members": int((labels == k).sum()), "centroid": centres[k].tolist()}
                      for k in range(len(centres))]
        for i, label, distance in zip(members, labels, distances, strict=True):
            char = prepared.characters[i]
            for box_id in (char["face_id"], char["body_id"]):
                if not box_id:
                    continue
                if box_id in bad:  # its partner crop carries the character
                    errors.append({"id": row_id(box_id, window_id), "shard": shard, "stage": "label",
                                   "source": f"{cfg.crops}#{box_id}", "reason": bad[box_id]})
                    continue
                rows.append({"row_id": row_id(box_id, window_id), "instance_id": box_id,
                             "type": parse_instance_id(box_id).type, "panel_id": char["panel_id"],
                             "series_id": char["series_id"], "window_id": window_id, "char_key": char["key"],
                             "identity": int(label), "series_identity": None, "distance": float(distance),
                             "box": boxes[box_id], "shard": shard, **model_id})
    return (pa.Table.from_pylist(rows, schema=LABEL_SCHEMA), error_table(errors),
            pa.Table.from_pylist(centroids, schema=CENTROID_SCHEMA))


def expected_rows(unit: ShardInput) -> int:
    """(instance, window) pairs of a work unit: every box on a window's panels, once per window."""
    per_panel: dict[str, int] = defaultdict(int)
    for p in unit.crops["panel_id"].to_pylist():
        per_panel[p] += 1
    for i in unit.crop_errors["id"].to_pylist():
        per_panel[str(parse_instance_id(i).panel_id)] += 1
    return sum(per_panel.get(p, 0) for w in unit.windows for p in window_panels(w))


def _embedding_table(prepared: PreparedShard, embeddings: np.ndarray) -> pa.Table:
    return pa.Table.from_pylist([{"char_key": c["key"], "face_id": c["face_id"], "body_id": c["body_id"],
                                  "embedding": e.tolist()} for c, e in zip(prepared.characters, embeddings,
                                                                           strict=True)],
                                schema=EMBEDDING_SCHEMA)


def windows_root(out: str) -> str:
    return io.join(out, "_windows")


def commit_shard(cfg: LabelConfig, prepared: PreparedShard, embeddings: np.ndarray,
                 model_id: dict[str, str]) -> ShardSummary:
    """Cluster, write the sidecars, then commit the work unit's window labels (the manifest last)."""
    root = windows_root(cfg.out)
    output = ShardedOutput(root, "row_id")
    if output.is_committed(prepared.shard):
        return _summary(output, prepared.shard)
    rows, errors, centroids = label_rows(prepared, embeddings, cfg, model_id)
    io.write_bytes_atomic(io.join(root, "centroids", f"{prepared.shard}.parquet"), table_to_parquet_bytes(centroids))
    if cfg.keep_embeddings:
        io.write_bytes_atomic(io.join(root, "embeddings", f"{prepared.shard}.parquet"),
                              table_to_parquet_bytes(_embedding_table(prepared, embeddings)))
    return output.commit(prepared.shard, rows, errors, input_rows=expected_rows(prepared.unit))


def _summary(output: ShardedOutput, shard: str) -> ShardSummary:
    entry = json.loads(io.read_text(io.join(output.root, "_manifest", f"{shard}.json")))
    return ShardSummary(**entry, skipped=True)


def _prepare_batch(batch: dict[str, Any], cfg: LabelConfig, face_size: int, body_size: int,
                   pages_per_shard: int, transform: dict[str, Any] | None = None) -> dict[str, list]:
    """Ray Data task (CPU): work items → pickled :class:`PreparedShard` (empty for committed shards)."""
    output = ShardedOutput(windows_root(cfg.out), "row_id")
    payloads = []
    for shard, windows in zip(batch["shard"], batch["windows"], strict=True):
        item = {"shard": str(shard), "windows": [str(w) for w in windows]}
        payloads.append(b"" if output.is_committed(item["shard"]) else
                        pickle.dumps(prepare_shard(cfg, item, face_size, body_size, pages_per_shard, transform)))
    return {"shard": [str(s) for s in batch["shard"]], "payload": payloads}


def actor_threads(cfg: LabelConfig) -> int:
    """Torch threads of an embedding actor: ``torch_threads``, else its logical CPUs rounded up (an actor given
    1.75 CPUs next to 0.25-CPU decoding tasks should use both cores, not Ray's floor of 1)."""
    return cfg.torch_threads or max(1, math.ceil(cfg.num_cpus_per_actor))


class ShardLabeler:
    """Ray Data actor (GPU when the cluster has one): loads the model once, embeds prepared work units,
    clusters their windows and commits them."""

    def __init__(self, cfg: dict[str, Any], model_id: dict[str, str]) -> None:
        import torch

        from reid.label_window import CharacterEmbedder

        self.cfg = config.from_dict(LabelConfig, cfg)
        self.model_id = model_id
        model, _ = load_reid_model(self.cfg, expected_sha256=model_id["model_sha256"])
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        torch.set_num_threads(actor_threads(self.cfg))
        self.embedder = CharacterEmbedder(model, device, self.cfg.batch_size)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        summaries = []
        for shard, payload in zip(batch["shard"], batch["payload"], strict=True):
            if not payload:
                summaries.append(_summary(ShardedOutput(windows_root(self.cfg.out), "row_id"), str(shard)))
                continue
            prepared: PreparedShard = pickle.loads(payload)  # made by _prepare_batch of this same job
            embeddings = self.embedder.embed_uint8(**prepared.images)
            if self.cfg.fail_after_shards:
                # Fault injection: the actors run ahead of the driver's loop (all of a tiny corpus could be
                # committed before its exit lands); pausing before each commit leaves units uncommitted.
                time.sleep(FAULT_INJECTION_PAUSE_S)
            summaries.append(commit_shard(self.cfg, prepared, embeddings, self.model_id))
        return summaries_batch(summaries)


# -- pass 2: series identities -----------------------------------------------------------------------------

def series_of_shard(shard: str) -> int:
    """The series of a shard id made by :func:`reid.crop.shard_id` (``<series>-<block>``)."""
    return int(shard.split("-", 1)[0])


def link_series(cfg: LabelConfig, shards: list[str]) -> dict[tuple[str, int], int]:
    """(window_id, window identity) → series identity, for the window shards of one series."""
    root = windows_root(cfg.out)
    centroids = pa.concat_tables([_read(io.join(root, "centroids", f"{s}.parquet")) for s in sorted(shards)])
    if centroids.num_rows == 0:
        return {}
    points = np.asarray(centroids["centroid"].to_pylist(), np.float64)
    window_ids = np.asarray(centroids["window_id"].to_pylist(), object)
    labels = np.asarray(centroids["identity"].to_pylist(), np.int64)
    series = np.asarray(centroids["series_id"].to_pylist(), np.int64)
    linked = link_windows(points, labels, window_ids, series, cfg.link_threshold, cfg.metric, cfg.linkage)
    return {(w, int(k)): int(s) for w, k, s in zip(window_ids, labels, linked, strict=True)}


def finish_series(cfg: LabelConfig, shards: list[str]) -> list[ShardSummary]:
    """Pass 2 for one series: link its window identities, commit its final shards. Idempotent."""
    final = ShardedOutput(cfg.out, "row_id")
    windows = ShardedOutput(windows_root(cfg.out), "row_id")
    todo = [s for s in shards if not final.is_committed(s)]
    summaries = [_summary(final, s) for s in shards if s not in todo]
    if not todo:
        return summaries
    links = link_series(cfg, shards)
    for shard in todo:
        rows = _read(io.join(windows.root, "data", f"{shard}.parquet"))
        keys = zip(rows["window_id"].to_pylist(), rows["identity"].to_pylist(), strict=True)
        series_identity = pa.array([links[k] for k in keys], pa.int64())
        rows = rows.set_column(rows.schema.get_field_index("series_identity"), "series_identity", series_identity)
        errors = _read(io.join(windows.root, "errors", f"{shard}.parquet"))
        summaries.append(final.commit(shard, rows, errors, input_rows=_summary(windows, shard).input_rows))
    return summaries


def _finish_batch(batch: dict[str, Any], cfg: LabelConfig) -> dict[str, list]:
    summaries = [s for shards in batch["shards"] for s in finish_series(cfg, [str(x) for x in shards])]
    return summaries_batch(summaries)


# -- driver --------------------------------------------------------------------------------------------------

def load_reid_model(cfg: LabelConfig, expected_sha256: str | None = None):
    """The Re-ID net of ``cfg.model`` and its sha256; raises CheckpointError on a bad path, a checkpoint that
    is not a Re-ID model, a config that differs from the flags, or bytes that changed since the driver read
    them."""
    from reid.models.checkpoint import load_checkpoint_payload, model_from_payload

    try:
        data = io.read_bytes(cfg.model)
    except (FileNotFoundError, IsADirectoryError, OSError) as exc:
        raise CheckpointError(f"{cfg.model}: cannot read the model checkpoint ({exc})") from None
    sha256 = hashlib.sha256(data).hexdigest()
    if expected_sha256 and sha256 != expected_sha256:
        raise CheckpointError(f"{cfg.model} changed while the job ran (sha256 {sha256[:12]} != "
                              f"{expected_sha256[:12]})")
    payload = load_checkpoint_payload(cfg.model)
    model, model_cfg, _ = model_from_payload(payload, cfg.model, expected_kind="reid")
    mismatch = [f"{k}: checkpoint {getattr(model_cfg, k)!r} != flag {getattr(cfg, k)!r}" for k in MODEL_FIELDS
                if getattr(cfg, k) is not None and getattr(cfg, k) != getattr(model_cfg, k)]
    if mismatch:
        raise CheckpointError(f"{cfg.model}: the model does not match the requested config: {mismatch}")
    return model, sha256


def check_inputs(cfg: LabelConfig) -> dict[str, Any]:
    """Fail fast, before any work: finished crops, the right instance CSV, a Re-ID model, readable sequences.

    Returns the crop job's parameters plus ``model_sha256`` and ``model_config``.
    """
    from reid.train.data import committed_crop_files, crop_job_params

    committed_crop_files(cfg.crops)
    params = crop_job_params(cfg.crops)
    if cfg.instances and _normpath(cfg.instances) != _normpath(params.get("instances", "")):
        raise ConfigError(f"--instances {cfg.instances} is not the CSV the crops in {cfg.crops} were made from "
                          f"({params.get('instances')})")
    model, sha256 = load_reid_model(cfg)
    if cfg.sequences:
        formats.read_sequences(cfg.sequences, panels_per_window=cfg.window_size)
    if cfg.ground_truth and not io.exists(cfg.ground_truth):
        raise DataFormatError(cfg.ground_truth, "ground truth file not found")
    return {**params, "model_sha256": sha256, "model_config": model.config.to_dict()}


def _normpath(path: str) -> str:
    return path if io.is_uri(path) else os.path.abspath(os.path.expanduser(path))


def job_identity(cfg: LabelConfig, inputs: dict[str, Any]) -> dict[str, Any]:
    """What must not change between a killed run and its re-run (else the outputs would mix)."""
    keys = ("crops", "sequences", "window_size", "threshold", "metric", "linkage", "link_threshold",
            "max_image_pixels")
    return {**{k: getattr(cfg, k) for k in keys}, "stride": None if cfg.sequences else cfg.stride,
            "model_sha256": inputs["model_sha256"]}


def decoding_fused(cfg: LabelConfig, gpus_per_actor: float) -> bool:
    """Whether Ray Data runs the decoding step inside the embedding actors: it fuses a task-pool map into the
    actor-pool map after it when both ask for the same resources (``are_remote_args_compatible``). That is
    the CPU-only default (1 CPU each): every actor decodes its unit then embeds it, one process per CPU, which
    measured faster on CPUs than an actor with several threads beside decoding tasks (docs/BENCHMARKS.md)."""
    return not gpus_per_actor and cfg.num_cpus_per_task == cfg.num_cpus_per_actor


def pool_size(cfg: LabelConfig, gpus_per_actor: float, items: int, resources: dict[str, float]) -> int:
    """Embedding actors for a cluster with ``resources`` (``ray.cluster_resources()``): ``max_actors``, else one
    per ``gpus_per_actor`` GPUs, else as many CPU actors as fit, less one decoding task's CPUs when the
    decoding runs apart (so the actors never hold every CPU the decoding tasks need), never more than units."""
    if cfg.max_actors:
        return cfg.max_actors
    if gpus_per_actor:
        return max(1, int(resources.get("GPU", 0) // gpus_per_actor))
    cpus = resources.get("CPU", 1) - (0 if decoding_fused(cfg, gpus_per_actor) else cfg.num_cpus_per_task)
    return max(1, min(items, int(cpus // max(cfg.num_cpus_per_actor, 1.0))))


def run_windows_pass(cfg: LabelConfig, items: list[dict[str, Any]], model_id: dict[str, str],
                     model_cfg: dict[str, Any], pages_per_shard: int, tracker) -> dict[str, float]:
    """Pass 1 over the pending work units; returns counts of this run."""
    import ray
    from tqdm import tqdm

    output = ShardedOutput(windows_root(cfg.out), "row_id")
    pending = [i for i in items if not output.is_committed(i["shard"])]
    counts: dict[str, float] = {"shards": 0, "rows": 0, "errors": 0, "seconds": 0.0}
    if not pending:
        return counts
    resources = ray.cluster_resources()
    gpus = cfg.num_gpus_per_actor
    if gpus is None:
        gpus = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
    actors = pool_size(cfg, gpus, len(pending), resources)
    ds = ray.data.from_items(pending, override_num_blocks=len(pending))
    ds = ds.map_batches(_prepare_batch, fn_kwargs={"cfg": cfg, "face_size": model_cfg["face_size"],
                                                   "body_size": model_cfg["body_size"],
                                                   "pages_per_shard": pages_per_shard,
                                                   "transform": model_cfg.get("transform")},
                        batch_size=1, num_cpus=cfg.num_cpus_per_task)
    ds = ds.map_batches(ShardLabeler, fn_constructor_kwargs={"cfg": config.to_dict(cfg), "model_id": model_id},
                        batch_size=1, num_cpus=cfg.num_cpus_per_actor, num_gpus=gpus or None,
                        # all actors start at once: scaling up one by one left a CPU idle for the first ~7 s
                        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors, initial_size=actors))
    start = last_logged = time.time()
    bar = tqdm(total=len(items), initial=len(items) - len(pending), unit="shard", desc="label", smoothing=0.1)
    first: tuple[float, float] | None = None  # (time, boxes) at the first result: after the actors' start
    for row in ds.iter_rows():
        counts["shards"] += 1
        counts["rows"] += row["rows"]
        counts["errors"] += row["error_rows"]
        elapsed = time.time() - start
        first = first or (time.time(), counts["rows"] + counts["errors"])
        bar.update(1)
        bar.set_postfix(instances=counts["rows"], per_s=f"{counts['rows'] / max(elapsed, 1e-9):.0f}",
                        unassigned=counts["errors"])
        done = len(items) - len(pending) + counts["shards"]
        if time.time() - last_logged > PROGRESS_LOG_S or done == len(items):
            last_logged = time.time()
            tracker.log_metrics({"shards_done": done, "progress_instances_per_s": counts["rows"] / elapsed},
                                step=done)
        if cfg.fail_after_shards and counts["shards"] >= cfg.fail_after_shards:
            log.error("fault injection: driver exits after %d shards", counts["shards"])
            os._exit(3)
    bar.close()
    counts["seconds"] = time.time() - start
    if first:
        counts["first_result_seconds"] = first[0] - start  # start-up: Ray Data, the actors' imports and model
    if first and counts["shards"] > 1 and time.time() > first[0]:
        counts["steady_instances_per_s"] = (counts["rows"] + counts["errors"] - first[1]) / (time.time() - first[0])
    return counts


def run_series_pass(cfg: LabelConfig, shards: list[str]) -> int:
    """Pass 2: one task per series that still has uncommitted final shards; returns shards committed now."""
    import ray

    final = ShardedOutput(cfg.out, "row_id")
    by_series: dict[int, list[str]] = defaultdict(list)
    for s in shards:
        by_series[series_of_shard(s)].append(s)
    todo = [{"series": k, "shards": sorted(v)} for k, v in sorted(by_series.items())
            if not all(final.is_committed(s) for s in v)]
    if not todo:
        return 0
    ds = ray.data.from_items(todo, override_num_blocks=len(todo))
    # linking is CPU-bound: at least one CPU per task, so small decoding tasks (--num-cpus-per-task 0.25) do not
    # turn into 4 linking workers per core, each holding its own imports (+1.8 GB at 16 series in bench_label)
    ds = ds.map_batches(_finish_batch, fn_kwargs={"cfg": cfg}, batch_size=1, num_cpus=max(1.0, cfg.num_cpus_per_task))
    return sum(1 for row in ds.iter_rows() if not row["skipped"])


def run_label(cfg: LabelConfig) -> dict[str, Any]:
    """Run the label stage end to end (see the module doc); returns totals, metrics and the report path."""
    from reid.raycluster import init_ray
    from reid.tracking import Tracker

    inputs = check_inputs(cfg)
    identity = job_identity(cfg, inputs)
    windows_out, final = ShardedOutput(windows_root(cfg.out), "row_id"), ShardedOutput(cfg.out, "row_id")
    windows_out.bind_job(identity)
    final.bind_job(identity)
    crops = ShardedOutput(cfg.crops, "instance_id")
    items = plan_items(cfg, crops, inputs["pages_per_shard"])
    shards = [i["shard"] for i in items]
    start = time.time()
    tracker = Tracker(cfg.mlflow_uri, cfg.name, cfg.experiment, tags={"reid.stage": "label"},
                      spool_dir=cfg.out if not io.is_uri(cfg.out) else None)
    tracker.log_params({**config.to_dict(cfg), "model_sha256": inputs["model_sha256"], "shards": len(shards),
                        **{f"model_{k}": v for k, v in inputs["model_config"].items()}})
    model_id = {"model": cfg.model, "model_sha256": inputs["model_sha256"], "run_id": tracker.run_id or ""}
    init_ray(cfg.ray_address, cfg.ray_num_cpus)
    counts = run_windows_pass(cfg, items, model_id, inputs["model_config"], inputs["pages_per_shard"], tracker)
    one_window_per_box = not cfg.sequences and cfg.stride == cfg.window_size
    expected = json.loads(io.read_text(io.join(cfg.crops, "_SUCCESS")))["input_rows"] if one_window_per_box \
        else None
    windows_out.finalize(shards, expected_input_rows=expected)
    run_series_pass(cfg, shards)
    elapsed = time.time() - start
    totals = final.finalize(shards, expected_input_rows=expected,
                            extra={"seconds_last_run": round(elapsed, 3), "shards_this_run": counts["shards"]})
    metrics = {"rows": totals["rows"], "unassigned": totals["error_rows"], "shards": totals["shards"],
               "seconds": elapsed, "shards_this_run": counts["shards"], "embed_seconds": counts["seconds"],
               "instances_per_s": (counts["rows"] + counts["errors"]) / counts["seconds"] if counts["seconds"]
               else 0.0, "steady_instances_per_s": counts.get("steady_instances_per_s", 0.0),
               "first_result_seconds": counts.get("first_result_seconds", 0.0)}
    metrics.update(evaluate(cfg))
    io.write_text_atomic(io.join(cfg.out, "metrics.json"), json.dumps(metrics, indent=1, sort_keys=True))
    report = None
    if cfg.report_windows:
        from reid.report import write_report

        report = write_report(cfg.out, cfg.crops, cfg.comics_root or inputs.get("comics_root", ""),
                              io.join(cfg.out, "report"), cfg.report_windows, cfg.report_series,
                              cfg.report_members)
    tracker.log_metrics(metrics, step=0)
    if not io.is_uri(cfg.out):
        tracker.log_artifact(io.join(cfg.out, "metrics.json"))
        if report:
            tracker.log_artifact(os.path.dirname(report), "report")
    tracker.close()
    return {"totals": totals, "metrics": metrics, "report": report, "run_id": tracker.run_id,
            "tracking_uri": tracker.uri}


# -- evaluation ------------------------------------------------------------------------------------------------

def evaluate(cfg: LabelConfig) -> dict[str, float]:
    """Scores against the ground truth the config names (annotated sequences, a ground-truth CSV)."""
    metrics: dict[str, float] = {}
    if cfg.sequences:
        metrics.update(evaluate_sequences(cfg.out, formats.read_sequences(cfg.sequences,
                                                                          panels_per_window=cfg.window_size)))
    if cfg.ground_truth:
        metrics.update(evaluate_ground_truth(cfg.out, cfg.ground_truth))
    return metrics


def evaluate_sequences(labels_root: str, sequences) -> dict[str, float]:
    """ARI, AMI, B-cubed (windows as groups) and retrieval metrics of the labelled annotated windows.

    One item per character instance per window that carries a charId; unassigned ones are counted apart.
    Holds the annotated set (not the corpus) in memory.
    """
    from reid.eval.metrics import clustering_scores, retrieval_metrics

    truth = {(inst_id, seq.seq_id): f"{seq.seq_id}|{char.char_id}" for seq in sequences for char in seq.characters
             for inst in char.instances for inst_id in (inst.face, inst.body) if inst_id}
    items: dict[tuple[str, str], tuple[int, str, np.ndarray]] = {}
    unassigned = 0
    for shard, rows in iter_labels(labels_root, ["instance_id", "window_id", "char_key", "identity"]):
        embeddings = _shard_embeddings(labels_root, shard)
        for r in rows.to_pylist():
            label = truth.get((r["instance_id"], r["window_id"]))
            if label is None:
                continue
            if r["status"] == UNASSIGNED:
                unassigned += 1
                continue
            items.setdefault((r["window_id"], r["char_key"]), (r["identity"], label, embeddings[r["char_key"]]))
    out: dict[str, float] = {"eval_instances": len(items), "eval_unassigned_boxes": unassigned}
    if not items:
        return out
    keys = list(items)
    pred = np.asarray([items[k][0] for k in keys])
    labels = np.asarray([items[k][1] for k in keys])
    groups = np.asarray([k[0] for k in keys])
    out.update(clustering_scores(pred, labels, groups))
    retrieval = retrieval_metrics(np.stack([items[k][2] for k in keys]), labels, groups)
    # AccuracyCalculator's AMI/NMI cluster the embeddings with k-means: not the assigner's AMI above
    out.update({f"kmeans_{k}" if k in ("AMI", "NMI") else k: v for k, v in retrieval.items()})
    return {k: float(v) for k, v in out.items()}


def _shard_embeddings(labels_root: str, shard: str) -> dict[str, np.ndarray]:
    table = _read(io.join(windows_root(labels_root), "embeddings", f"{shard}.parquet"), ["char_key", "embedding"])
    return {k: np.asarray(v, np.float32) for k, v in zip(table["char_key"].to_pylist(),
                                                         table["embedding"].to_pylist(), strict=True)}


def evaluate_ground_truth(labels_root: str, ground_truth: str) -> dict[str, float]:
    """Window identities (windows as groups) and series identities (series as groups) against true
    identities (``instance_id,identity`` CSV), one item per character instance."""
    from reid.eval.metrics import clustering_scores

    with io.open_input(ground_truth) as stream:
        truth_table = pacsv.read_csv(stream, convert_options=pacsv.ConvertOptions(
            include_columns=["instance_id", "identity"], column_types={"identity": pa.string()}))
    truth = dict(zip(truth_table["instance_id"].to_pylist(), truth_table["identity"].to_pylist(), strict=True))
    window_items: dict[tuple[str, str], tuple[int, str]] = {}
    series_items: dict[str, tuple[int, str, int]] = {}
    for _, rows in iter_labels(labels_root, ["instance_id", "window_id", "char_key", "series_id", "identity",
                                             "series_identity"], include_unassigned=False):
        for r in rows.to_pylist():
            label = truth.get(r["instance_id"])
            if label is None:
                continue
            window_items.setdefault((r["window_id"], r["char_key"]), (r["identity"], label))
            series_items.setdefault(r["char_key"], (r["series_identity"], label, r["series_id"]))
    out: dict[str, float] = {}
    if window_items:
        w = list(window_items.values())
        scores = clustering_scores([p for p, _ in w], [y for _, y in w], [k[0] for k in window_items])
        out.update({f"gt_window_{k}": float(v) for k, v in scores.items()})
    if series_items:
        s = list(series_items.values())
        scores = clustering_scores([p for p, _, _ in s], [y for _, y, _ in s], [g for _, _, g in s])
        out.update({f"gt_series_{k}": float(v) for k, v in scores.items()})
    return out
