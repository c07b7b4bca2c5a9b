"""``--corrections``: the label job keeps what a reviewer decided (:mod:`reid.core.corrections`).

The driver turns the review log into :class:`~reid.core.corrections.Corrections` once, before any work, and writes it
to ``<out>/_corrections.json`` for pass 1's actors: each window is clustered with the reviewed groups as
must-links and their splits as cannot-links (beside the panel cannot-links, which win). Pass 2 links each
series' window identities under the same constraints, then renumbers its identities so that every reviewed
identity keeps its id and name, whatever the model. The finish step writes ``<out>/corrections.json``
(:data:`reid.core.contracts.review.APPLIED_FILE`): which log it read, and for each group whether it stayed one
identity with its id, and each split whether it stayed split.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections import defaultdict
from typing import Any

import numpy as np
import pyarrow as pa
from scipy.spatial.distance import pdist, squareform

from reid.core import io
from reid.core.assign import cluster_conflicts, constrained_agglomerative
from reid.core.contracts.crops import series_of_shard, shards_by_series
from reid.core.contracts.labels import labels_output, read_centroids, read_labels, windows_output
from reid.core.contracts.review import APPLIED_FILE, open_log
from reid.core.corrections import Corrections, corrections_from_state, replay, stable_identities
from reid.core.errors import ConfigError
from reid.core.linking import DEFAULT_LINKING
from reid.stages.label.config import LabelConfig
from reid.stages.label.evaluate import write_series_figures
from reid.stages.label.series import commit_checked

log = logging.getLogger(__name__)
PENDING_FILE = "_corrections.json"


def prepare_corrections(cfg: LabelConfig) -> Corrections:
    """Read the review log and the labels it was made on; write ``<out>/_corrections.json``. Raises a clear
    error for a missing log, one with no labels folder, or one whose labels are this run's output."""
    review = open_log(cfg.corrections, must_exist=True)
    labels_root = review.meta().get("labels_root", "")
    if not labels_root or not io.exists(labels_root):
        where = labels_root or "not recorded"
        raise ConfigError(f"--corrections {cfg.corrections}: the labels it was made on ({where}) are not readable")
    same = labels_root == cfg.out or (not io.is_uri(cfg.out)
                                      and os.path.abspath(labels_root) == os.path.abspath(cfg.out))
    if same:
        raise ConfigError(f"--corrections {cfg.corrections} was made on {labels_root}, this run's --out: write the "
                          "corrected labels to another folder (the reviewed ones are its input)")
    linking = [f"{k}={getattr(cfg, k)}" for k, plain in DEFAULT_LINKING.items()
               if getattr(cfg, k, None) not in (None, plain)]
    if linking:
        log.warning("label: --corrections links series with centroid distances and hard cannot-links; %s is not "
                    "used in this run", ", ".join(linking))
    actions = review.actions()
    labels = read_labels(labels_root, ["series_id", "window_id", "char_key", "identity", "series_identity"],
                         include_unassigned=False)
    corrections = corrections_from_state(replay(labels, actions), {
        "review_db": cfg.corrections, "labels_root": labels_root, "last_action": actions[-1].id if actions else 0})
    io.write_text_atomic(io.join(cfg.out, PENDING_FILE), json.dumps(corrections.to_dict()))
    log.info("label: %d reviewed identities and %d splits from %s", len(corrections.groups),
             len(corrections.apart), cfg.corrections)
    return corrections


@functools.lru_cache(maxsize=4)
def _load(out: str) -> Corrections:
    return Corrections.from_dict(json.loads(io.read_text(io.join(out, PENDING_FILE))))


def pending_corrections(cfg: LabelConfig) -> Corrections | None:
    """The corrections of this run (in a labeling actor: read once from ``<out>/_corrections.json``)."""
    return _load(cfg.out) if cfg.corrections else None


def link_series_corrected(cfg: LabelConfig, shards: list[str], corrections: Corrections
                          ) -> dict[tuple[str, int], int]:
    """(window_id, window identity) → series identity for one series: constrained linking, stable ids."""
    centroids = read_centroids(cfg.out, shards)
    if centroids.num_rows == 0:
        return {}
    points = np.asarray(centroids["centroid"].to_pylist(), np.float64)
    points /= np.maximum(np.linalg.norm(points, axis=1, keepdims=True), 1e-12)
    keys = centroids["member_keys"].to_pylist()
    members = [dict(zip(panels, k, strict=True)) for panels, k in
               zip(centroids["member_panels"].to_pylist(), keys, strict=True)]
    blocked = cluster_conflicts(members)
    key_sets = [set(k) for k in keys]
    constraints = corrections.constraints(key_sets)
    must = None
    if constraints is not None:
        blocked = blocked | constraints[0]
        must = constraints[1] & ~blocked
    labels = constrained_agglomerative(squareform(pdist(points, metric=cfg.metric)), cfg.link_threshold,
                                       cfg.linkage, blocked, must)
    ids, _ = stable_identities(labels, key_sets, corrections, series_of_shard(shards[0]))
    return {(w, int(k)): int(s) for w, k, s in zip(centroids["window_id"].to_pylist(),
                                                    centroids["identity"].to_pylist(), ids, strict=True)}


def run_corrected_series_pass(cfg: LabelConfig, shards: list[str], corrections: Corrections) -> int:
    """Pass 2 with corrections, on the driver (linking is a small job per series): commit every final shard
    with its series identity. Idempotent, like :func:`reid.stages.label.series.finish_series`."""
    final, windows = labels_output(cfg.out), windows_output(cfg.out)
    committed = 0
    for series, series_shards in shards_by_series(shards).items():
        todo = [s for s in series_shards if not final.is_committed(s)]
        if not todo:
            continue
        links = link_series_corrected(cfg, series_shards, corrections)
        for shard in todo:
            rows = io.read_parquet(windows.data_path(shard))
            keys = zip(rows["window_id"].to_pylist(), rows["identity"].to_pylist(), strict=True)
            column = pa.array([links[k] for k in keys], pa.int64())
            rows = rows.set_column(rows.schema.get_field_index("series_identity"), "series_identity", column)
            commit_checked(cfg.out, shard, rows, io.read_parquet(windows.errors_path(shard)),
                           windows.summary(shard).input_rows)
            committed += 1
        if cfg.ground_truth:
            write_series_figures(cfg.out, cfg.ground_truth, series, series_shards)
    return committed


def record_applied(cfg: LabelConfig, corrections: Corrections) -> dict[str, Any]:
    """Check the finished output against the corrections and write ``<out>/corrections.json``."""
    rows = read_labels(cfg.out, ["series_id", "char_key", "series_identity"], include_unassigned=False)
    final: dict[str, set[tuple[int, int]]] = defaultdict(set)
    for series, key, identity in zip(*(rows[c].to_pylist() for c in ("series_id", "char_key",
                                                                      "series_identity")), strict=True):
        final[key].add((series, identity))
    groups, kept = [], 0
    for g in corrections.groups:
        found = set().union(*(final.get(k, set()) for k in g["keys"])) if g["keys"] else set()
        same = found == {(g["series"], g["identity"])}
        kept += same
        groups.append({k: g[k] for k in ("series", "identity", "name", "not_character")} |
                      {"instances": len(g["keys"]), "kept": same, "identities_now": sorted(found)})
    apart_kept = 0
    for a, b in corrections.apart:
        side_a = set().union(*(final.get(k, set()) for k in corrections.groups[a]["keys"]))
        side_b = set().union(*(final.get(k, set()) for k in corrections.groups[b]["keys"]))
        apart_kept += not (side_a & side_b)
    applied = {"source": corrections.source, "groups": groups, "groups_kept": kept, "splits": len(corrections.apart),
               "splits_kept": apart_kept,
               "names": [[g["series"], g["identity"], g["name"]] for g in corrections.groups if g["name"]],
               "not_character": [[g["series"], g["identity"]] for g in corrections.groups if g["not_character"]]}
    io.write_text_atomic(io.join(cfg.out, APPLIED_FILE), json.dumps(applied, indent=1))
    return {"corrections_groups": len(groups), "corrections_groups_kept": kept,
            "corrections_splits": len(corrections.apart), "corrections_splits_kept": apart_kept}
