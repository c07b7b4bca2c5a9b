"""Pass 2 of the label job: link window identities across each series; each final shard is checked for the
cannot-link guarantee as it is committed."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa

from reid.core import io
from reid.core.assign import link_windows
from reid.core.contracts.crops import (
    series_of_shard,
    shards_by_series,
)
from reid.core.contracts.labels import (
    iter_labels,
    labels_output,
    read_centroids,
    read_embeddings,
    windows_output,
)
from reid.core.contracts.manifest import ShardSummary, summaries_batch
from reid.core.errors import ReidError
from reid.core.linking import DEFAULT_LINKING
from reid.stages.label.config import LabelConfig
from reid.stages.label.evaluate import write_series_figures

log = logging.getLogger(__name__)


def link_series(cfg: LabelConfig, shards: list[str]) -> dict[tuple[str, int], int]:
    """(window_id, window identity) → series identity, for the window shards of one series."""
    centroids = read_centroids(cfg.out, shards)
    if centroids.num_rows == 0:
        return {}
    points = np.asarray(centroids["centroid"].to_pylist(), np.float64)
    window_ids = np.asarray(centroids["window_id"].to_pylist(), object)
    labels = np.asarray(centroids["identity"].to_pylist(), np.int64)
    series = np.asarray(centroids["series_id"].to_pylist(), np.int64)
    members = [dict(zip(panels, keys, strict=True)) for panels, keys in
               zip(centroids["member_panels"].to_pylist(), centroids["member_keys"].to_pylist(), strict=True)]
    if cfg.link_distance == "members":  # one row per member crop: linking compares crops, not centres
        points, labels, window_ids, series, members = _member_rows(cfg, shards, centroids)
    linked = link_windows(points, labels, window_ids, series, cfg.link_threshold, cfg.metric, cfg.linkage,
                          members=members, distance=cfg.link_distance or DEFAULT_LINKING["link_distance"],
                          constraint=cfg.link_constraint or DEFAULT_LINKING["link_constraint"])
    return {(w, int(k)): int(s) for w, k, s in zip(window_ids, labels, linked, strict=True)}


def _member_rows(cfg: LabelConfig, shards: list[str], centroids: pa.Table):
    """(points, window labels, window ids, series, members) with one row per member of each window identity,
    from pass 1's stored embeddings (``--link-distance members`` keeps them)."""
    embeddings: dict[str, np.ndarray] = {}
    for shard in shards:
        embeddings.update(read_embeddings(cfg.out, shard))
    points, labels, window_ids, series, members = [], [], [], [], []
    for row in centroids.to_pylist():
        for key, panel in zip(row["member_keys"], row["member_panels"], strict=True):
            points.append(embeddings[key])
            labels.append(row["identity"])
            window_ids.append(row["window_id"])
            series.append(row["series_id"])
            members.append({panel: key})
    return (np.asarray(points, np.float64), np.asarray(labels, np.int64), np.asarray(window_ids, object),
            np.asarray(series, np.int64), members)


def finish_series(cfg: LabelConfig, shards: list[str]) -> list[ShardSummary]:
    """Pass 2 for one series: link its window identities, check cannot-link and commit its final shards, then
    its ground-truth figures when the job has a ground truth (:func:`write_series_figures`). Idempotent."""
    final = labels_output(cfg.out)
    windows = windows_output(cfg.out)
    todo = [s for s in shards if not final.is_committed(s)]
    summaries = [final.summary(s) for s in shards if s not in todo]
    links = link_series(cfg, shards) if todo else {}
    for shard in todo:
        rows = io.read_parquet(windows.data_path(shard))
        keys = zip(rows["window_id"].to_pylist(), rows["identity"].to_pylist(), strict=True)
        series_identity = pa.array([links[k] for k in keys], pa.int64())
        rows = rows.set_column(rows.schema.get_field_index("series_identity"), "series_identity", series_identity)
        errors = io.read_parquet(windows.errors_path(shard))
        summaries.append(commit_checked(cfg.out, shard, rows, errors, windows.summary(shard).input_rows))
    if cfg.ground_truth and shards:
        write_series_figures(cfg.out, cfg.ground_truth, series_of_shard(shards[0]), shards)
    return summaries


def cannot_link_violations(rows: pa.Table, shard: str, limit: int = 20) -> list[str]:
    """The finish step's guarantee, for one shard's label rows: no window identity and no series identity holds
    two different character instances of one panel (a panel's rows all lie in one shard). Returns the first
    ``limit`` violations, in words; [] when the shard keeps the guarantee."""
    seen: dict[tuple, str] = {}
    violations = []
    columns = [rows[c].to_pylist() for c in ("panel_id", "char_key", "window_id", "identity", "series_id",
                                             "series_identity")]
    for panel, char_key, window, identity, series, series_identity in zip(*columns, strict=True):
        for level, key in (("window", (window, identity)), ("series", (series, series_identity))):
            other = seen.setdefault((level, *key, panel), char_key)
            if other != char_key and len(violations) < limit:
                violations.append(f"{level} identity {key} holds {other} and {char_key} (shard {shard})")
    return violations


def _raise_violations(labels_root: str, violations: list[str]) -> None:
    if violations:
        raise ReidError(f"{labels_root}: cannot-link violated, two characters of one panel share an identity: "
                        + "; ".join(violations))


def commit_checked(labels_root: str, shard: str, rows: pa.Table, errors: pa.Table, input_rows: int
                   ) -> ShardSummary:
    """Commit one final shard after checking cannot-link on it: a shard that breaks the guarantee is never
    committed, so an output with ``_SUCCESS`` keeps it everywhere. Raises ReidError naming the violations."""
    _raise_violations(labels_root, cannot_link_violations(rows, shard))
    return labels_output(labels_root).commit(shard, rows, errors, input_rows=input_rows)


def check_cannot_link(labels_root: str, shards: list[str] | None = None) -> dict[str, int]:
    """Audit an existing labels output for the cannot-link guarantee (every shard, or ``shards``); the label job
    checks each shard as it commits it (:func:`commit_checked`).

    Raises ReidError naming the first violations; returns {"cannot_link_checked_rows": N}.
    """
    checked, violations = 0, []
    wanted = set(shards) if shards is not None else None
    for shard, rows in iter_labels(labels_root, ["panel_id", "char_key", "window_id", "identity", "series_id",
                                                 "series_identity"], include_unassigned=False):
        if wanted is not None and shard not in wanted:
            continue
        checked += rows.num_rows
        violations += cannot_link_violations(rows, shard, limit=20 - len(violations))
    _raise_violations(labels_root, violations)
    return {"cannot_link_checked_rows": checked}


def _finish_batch(batch: dict[str, Any], cfg: LabelConfig) -> dict[str, list]:
    summaries = [s for shards in batch["shards"] for s in finish_series(cfg, [str(x) for x in shards])]
    return summaries_batch(summaries)


def run_series_pass(cfg: LabelConfig, shards: list[str]) -> int:
    """Pass 2: one task per series that still has uncommitted final shards; returns shards committed now."""
    import ray

    final = labels_output(cfg.out)
    todo = [{"series": k, "shards": v} for k, v in shards_by_series(shards).items()
            if not all(final.is_committed(s) for s in v)]
    if not todo:
        return 0
    ds = ray.data.from_items(todo, override_num_blocks=len(todo))
    # linking is CPU-bound: at least one CPU per task, so small decoding tasks (--num-cpus-per-task 0.25) do not
    # turn into 4 linking workers per core, each holding its own imports (docs/BENCHMARKS.md)
    ds = ds.map_batches(_finish_batch, fn_kwargs={"cfg": cfg}, batch_size=1, num_cpus=max(1.0, cfg.num_cpus_per_task))
    return sum(1 for row in ds.iter_rows() if not row["skipped"])
