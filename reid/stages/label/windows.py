"""Pass 1 of the label job: embed every character instance once and cluster each window (Ray Data actor pool)."""

from __future__ import annotations

import logging
import math
import pickle
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from reid.core import config, io
from reid.core.contracts.crops import (
    pair_rows,
)
from reid.core.contracts.labels import (
    CENTROID_SCHEMA,
    EMBEDDING_SCHEMA,
    LABEL_SCHEMA,
    row_id,
    window_panels,
    windows_output,
)
from reid.core.contracts.manifest import (
    ShardSummary,
    error_table,
    summaries_batch,
    table_to_parquet_bytes,
)
from reid.core.data.ids import parse_instance_id
from reid.core.errors import DataFormatError
from reid.core.images import decode_image
from reid.runtime import faults
from reid.runtime.raycluster import actor_retry_args, task_retry_args, work_unit_lost
from reid.stages.label.config import LabelConfig, load_reid_model
from reid.stages.label.corrected import pending_corrections
from reid.stages.label.plan import ShardInput, read_shard_input

log = logging.getLogger(__name__)


PROGRESS_LOG_S = 10.0


@dataclass
class PreparedShard:
    """A work unit ready for the model: its crops decoded and preprocessed (uint8, see
    :class:`reid.core.label_window.CropPreprocessor`), one entry per character instance."""

    shard: str
    unit: ShardInput
    characters: list[dict[str, Any]]  # pair_rows rows without their image bytes
    images: dict[str, np.ndarray]  # face (N,3,F,F), body (N,3,B,B) uint8, face_mask, body_mask (N,)
    bad_boxes: dict[str, str]  # instance id -> why its crop does not decode


def prepare_shard(cfg: LabelConfig, item: dict[str, Any], face_size: int, body_size: int,
                  pages_per_shard: int, transform: dict[str, Any] | None = None) -> PreparedShard:
    """Read, pair, decode and preprocess a work unit's crops (CPU; no side effects, safe to retry)."""
    from reid.core.embedding import CropPreprocessor

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
    from reid.core.label_window import cluster_window

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
    corrections = pending_corrections(cfg)
    for window_id in unit.windows:
        panels = window_panels(window_id)
        errors += [{"id": row_id(i, window_id), "shard": shard, "stage": stage, "source": source, "reason": reason}
                   for p in panels for i, stage, source, reason in unusable_by_panel.get(p, [])]
        members = [i for p in panels for i in by_panel.get(p, [])]
        if not members:
            continue
        member_panels = [prepared.characters[i]["panel_id"] for i in members]
        reviewed = corrections.constraints([{prepared.characters[i]["key"]} for i in members]) \
            if corrections else None
        cannot, must = reviewed if reviewed is not None else (None, None)
        labels, centres, distances = cluster_window(embeddings[members], cfg.threshold, cfg.metric, cfg.linkage,
                                                    panels=member_panels, cannot_link=cannot, must_link=must)
        series = prepared.characters[members[0]]["series_id"]
        centroids += [{"series_id": series, "window_id": window_id, "identity": k,
                       "members": int((labels == k).sum()), "centroid": centres[k].tolist(),
                       "member_keys": [prepared.characters[i]["key"] for i, lab in zip(members, labels, strict=True)
                                       if lab == k],
                       "member_panels": [p for p, lab in zip(member_panels, labels, strict=True) if lab == k]}
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


def commit_shard(cfg: LabelConfig, prepared: PreparedShard, embeddings: np.ndarray,
                 model_id: dict[str, str]) -> ShardSummary:
    """Cluster, write the sidecars, then commit the work unit's window labels (the manifest last)."""
    output = windows_output(cfg.out)
    if output.is_committed(prepared.shard):
        return output.summary(prepared.shard)
    rows, errors, centroids = label_rows(prepared, embeddings, cfg, model_id)
    io.write_bytes_atomic(output.sidecar_path("centroids", prepared.shard), table_to_parquet_bytes(centroids))
    if cfg.keep_embeddings:
        io.write_bytes_atomic(output.sidecar_path("embeddings", prepared.shard),
                              table_to_parquet_bytes(_embedding_table(prepared, embeddings)))
    return output.commit(prepared.shard, rows, errors, input_rows=expected_rows(prepared.unit))


def _prepare_batch(batch: dict[str, Any], cfg: LabelConfig, face_size: int, body_size: int,
                   pages_per_shard: int, transform: dict[str, Any] | None = None) -> dict[str, list]:
    """Ray Data task (CPU): work items → pickled :class:`PreparedShard` (empty for committed shards)."""
    output = windows_output(cfg.out)
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

    def __init__(self, cfg: dict[str, Any], model_id: dict[str, str], prepare: dict[str, Any] | None = None
                 ) -> None:
        """``prepare``: the keyword arguments of :func:`_prepare_batch` when this actor decodes its units itself
        (batches of work items), None when it gets them prepared (batches of payloads)."""
        import torch

        from reid.core.embedding import CharacterEmbedder

        self.cfg = config.from_dict(LabelConfig, cfg)
        self.model_id = model_id
        self.prepare = prepare
        model, _ = load_reid_model(self.cfg, expected_sha256=model_id["model_sha256"])
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        torch.set_num_threads(actor_threads(self.cfg))
        self.embedder = CharacterEmbedder(model, device, self.cfg.batch_size)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        if self.prepare is not None:
            batch = _prepare_batch(batch, self.cfg, **self.prepare)
        summaries = []
        for shard, payload in zip(batch["shard"], batch["payload"], strict=True):
            if not payload:
                summaries.append(windows_output(self.cfg.out).summary(str(shard)))
                continue
            prepared: PreparedShard = pickle.loads(payload)  # made by _prepare_batch of this same job
            embeddings = self.embedder.embed_uint8(**prepared.images)
            faults.worker_dies_on(str(shard), self.cfg.fail_shard)
            # the actors run ahead of the driver's loop: with fault injection on, pause so units stay uncommitted
            faults.pause_before_commit(self.cfg.fail_after_shards)
            summaries.append(commit_shard(self.cfg, prepared, embeddings, self.model_id))
        return summaries_batch(summaries)


def decoding_fused(cfg: LabelConfig, gpus_per_actor: float) -> bool:
    """Whether the embedding actors decode their units themselves: when decoding tasks and actors ask for the same
    resources, the CPU-only default (1 CPU each). Every actor decodes its unit then embeds it, one process per CPU,
    which measured faster on CPUs than an actor with several threads beside decoding tasks (docs/BENCHMARKS.md).
    (Ray Data used to fuse the two maps; one actor map does the same and keeps the actors' own retry bound.)"""
    return not gpus_per_actor and cfg.num_cpus_per_task == cfg.num_cpus_per_actor


def unit_retry_args(cfg: LabelConfig) -> tuple[dict[str, int], dict[str, int]]:
    """Ray remote arguments of (the decoding tasks, the embedding actors). A decoding task whose process died is
    re-run ``--unit-retries`` times (Ray Data's default: for ever). The actors are never restarted by Ray: an
    actor that died stops the pass, and :func:`run_windows_pass` runs it again over the units not committed yet
    (an actor that may restart makes Ray's core worker print an error line on the console for every pool). The
    two kinds of arguments are not valid for each other's kind of map, so Ray Data never fuses the two maps: the
    actors decode their units themselves when they would be fused (:func:`decoding_fused`)."""
    return task_retry_args(cfg.unit_retries), actor_retry_args(0)


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
    """Pass 1 over the pending work units; returns counts of this run. A pass stopped by a labeling process
    that died (killed for memory, node lost) runs again over the units still uncommitted, ``--unit-retries``
    times; then the job stops with a WorkUnitLostError naming them (committed units stay: the same command
    resumes)."""
    from tqdm import tqdm

    from reid.runtime.raycluster import lost_worker_error

    output = windows_output(cfg.out)
    counts: dict[str, float] = {"shards": 0, "rows": 0, "errors": 0, "seconds": 0.0}
    pending = [i for i in items if not output.is_committed(i["shard"])]
    if not pending:
        return counts
    start = time.time()
    bar = tqdm(total=len(items), initial=len(items) - len(pending), unit="shard", desc="label", smoothing=0.1)
    for attempt in range(cfg.unit_retries + 1):
        try:
            _one_pass(cfg, items, pending, model_id, model_cfg, pages_per_shard, tracker, counts, bar, start)
            break
        except Exception as exc:
            cause = lost_worker_error(exc)
            pending = [i for i in items if not output.is_committed(i["shard"])]
            if cause is None or not pending:
                raise
            if attempt == cfg.unit_retries:
                raise work_unit_lost(exc, "label", cfg.unit_retries, [i["shard"] for i in pending]) from exc
            log.warning("label: a labeling process died (%s); running the pass again over the %d uncommitted "
                        "shard(s) (re-run %d of --unit-retries %d)", type(cause).__name__, len(pending),
                        attempt + 1, cfg.unit_retries)
    bar.close()
    counts["seconds"] = time.time() - start
    return counts


def _one_pass(cfg: LabelConfig, items: list[dict[str, Any]], pending: list[dict[str, Any]],
              model_id: dict[str, str], model_cfg: dict[str, Any], pages_per_shard: int, tracker,
              counts: dict[str, float], bar, start: float) -> None:
    """One Ray Data pass of decoding tasks and an embedding actor pool over ``pending``, adding to ``counts``."""
    import ray

    resources = ray.cluster_resources()
    gpus = cfg.num_gpus_per_actor
    if gpus is None:
        gpus = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
    actors = pool_size(cfg, gpus, len(pending), resources)
    task_retries, actor_retries = unit_retry_args(cfg)
    prepare = {"face_size": model_cfg["face_size"], "body_size": model_cfg["body_size"],
               "pages_per_shard": pages_per_shard, "transform": model_cfg.get("transform")}
    in_actor = decoding_fused(cfg, gpus)
    ds = ray.data.from_items(pending, override_num_blocks=len(pending))
    if not in_actor:
        ds = ds.map_batches(_prepare_batch, fn_kwargs={"cfg": cfg, **prepare}, batch_size=1,
                            num_cpus=cfg.num_cpus_per_task, **task_retries)
    ds = ds.map_batches(ShardLabeler, fn_constructor_kwargs={"cfg": config.to_dict(cfg), "model_id": model_id,
                                                             "prepare": prepare if in_actor else None},
                        batch_size=1, num_cpus=cfg.num_cpus_per_actor, num_gpus=gpus or None, **actor_retries,
                        # all actors start at once: scaling up one by one leaves a CPU idle meanwhile
                        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors, initial_size=actors))
    last_logged = time.time()
    first: tuple[float, float] | None = None  # (time, boxes) at the first result: after the actors' start
    done_before = counts["shards"]
    for row in ds.iter_rows():
        counts["shards"] += 1
        counts["rows"] += row["rows"]
        counts["errors"] += row["error_rows"]
        elapsed = time.time() - start
        first = first or (time.time(), counts["rows"] + counts["errors"])
        bar.update(1)
        bar.set_postfix(instances=counts["rows"], per_s=f"{counts['rows'] / max(elapsed, 1e-9):.0f}",
                        unassigned=counts["errors"])
        done = len(items) - len(pending) + counts["shards"] - done_before
        if time.time() - last_logged > PROGRESS_LOG_S or done == len(items):
            last_logged = time.time()
            tracker.log_metrics({"shards_done": done, "progress_instances_per_s": counts["rows"] / elapsed},
                                step=done)
        faults.driver_exit_after(int(counts["shards"]), cfg.fail_after_shards)
    if first and "first_result_seconds" not in counts:
        counts["first_result_seconds"] = first[0] - start  # start-up: Ray Data, the actors' imports and model
    if first and counts["shards"] - done_before > 1 and time.time() > first[0]:
        counts["steady_instances_per_s"] = ((counts["rows"] + counts["errors"] - first[1])
                                            / (time.time() - first[0]))
