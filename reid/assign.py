"""Identity assignment: agglomerative clustering of one window's embeddings, and a cross-window linker.

Pure functions over numpy arrays (DESIGN §3: average linkage, Euclidean distance on unit-norm
embeddings, threshold 0.82, i.e. about cosine similarity 0.66).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.cluster.hierarchy import fcluster
from scipy.cluster.hierarchy import linkage as hierarchy
from scipy.spatial.distance import pdist

METRICS = ("euclidean", "cosine")
LINKAGES = ("average", "complete", "single")


def _unit_rows(embeddings: Any) -> np.ndarray:
    points = np.asarray(embeddings, dtype=np.float64)
    if points.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {points.shape}")
    norms = np.linalg.norm(points, axis=1, keepdims=True)
    return points / np.maximum(norms, 1e-12)


def _first_seen_order(labels: np.ndarray) -> np.ndarray:
    """Relabel so clusters are numbered 0, 1, ... in order of their first row (deterministic output)."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[inverse.reshape(-1)]


def assign_window(
    embeddings: Any, threshold: float = 0.82, metric: str = "euclidean", linkage: str = "average"
) -> np.ndarray:
    """Cluster one window's embeddings (N, D) into identities: (N,) int64 labels 0..K-1.

    Rows are L2-normalised first; clusters merge while their linkage distance is below ``threshold`` (strictly,
    as scikit-learn's ``AgglomerativeClustering(distance_threshold=...)``, which the tests compare against).
    Labels are numbered in order of each cluster's first row. N = 0 gives an empty array, N = 1 [0].
    scipy, not scikit-learn: importing ``sklearn.cluster`` costs ~1 s in every labeling actor and task.
    """
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r}: expected one of {METRICS}")
    if linkage not in LINKAGES:
        raise ValueError(f"linkage={linkage!r}: expected one of {LINKAGES}")
    if threshold <= 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    points = _unit_rows(embeddings)
    if len(points) < 2:
        return np.zeros(len(points), dtype=np.int64)
    tree = hierarchy(pdist(points, metric=metric), method=linkage)
    # fcluster keeps merges at distance <= t: the largest float below the threshold makes it "< threshold"
    return _first_seen_order(fcluster(tree, t=np.nextafter(threshold, -np.inf), criterion="distance"))


def link_windows(
    embeddings: Any,
    window_labels: Any,
    window_ids: Any,
    series_ids: Any,
    threshold: float = 0.82,
    metric: str = "euclidean",
    linkage: str = "average",
) -> np.ndarray:
    """Series-level identities: cluster the centroids of every window's clusters, per series.

    embeddings (N, D); window_labels (N,) identity within the window (from ``assign_window``);
    window_ids (N,); series_ids (N,). A centroid is the mean of a cluster's unit-norm embeddings,
    re-normalised. Returns (N,) int64 identities, unique across the whole input (series never share
    one). Two clusters of one window may be linked if their centroids fall under the threshold.
    """
    points = _unit_rows(embeddings)
    columns = [np.asarray(c).reshape(-1) for c in (window_labels, window_ids, series_ids)]
    if any(len(c) != len(points) for c in columns):
        raise ValueError(f"window_labels, window_ids and series_ids must each have {len(points)} rows")
    window_labels, window_ids, series_ids = columns
    identities = np.empty(len(points), dtype=np.int64)
    next_identity = 0
    for series in _in_first_seen_order(series_ids):
        rows = np.flatnonzero(series_ids == series)
        # One key per window cluster, numbered in order of first appearance.
        keys = _first_seen_order(_pair_codes(window_ids[rows], window_labels[rows]))
        centroids = np.stack([points[rows[keys == k]].mean(axis=0) for k in range(keys.max() + 1)])
        cluster_of_key = assign_window(centroids, threshold, metric, linkage)
        identities[rows] = next_identity + cluster_of_key[keys]
        next_identity += int(cluster_of_key.max()) + 1
    return identities


def _in_first_seen_order(values: np.ndarray) -> list[Any]:
    _, first = np.unique(values, return_index=True)
    return [values[i] for i in sorted(first)]


def _pair_codes(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """One int per distinct (first, second) pair."""
    a = np.unique(first, return_inverse=True)[1].reshape(-1)
    b = np.unique(second, return_inverse=True)[1].reshape(-1)
    return a * (b.max() + 1) + b
