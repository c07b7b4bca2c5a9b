"""Identity assignment: agglomerative clustering of one window's embeddings, and a cross-window linker.

Pure functions over numpy arrays (average linkage, Euclidean distance on unit-norm embeddings; the paper's
threshold 0.82 is about cosine similarity 0.66, and a fine-tuned model records its own calibrated one).
Both levels can be constrained by what a page already says: two instances of one panel are two characters
(cannot-link), see :func:`constrained_agglomerative`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.cluster.hierarchy import fcluster
from scipy.cluster.hierarchy import linkage as hierarchy
from scipy.spatial.distance import pdist, squareform

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
    embeddings: Any,
    threshold: float = 0.82,
    metric: str = "euclidean",
    linkage: str = "average",
    panels: Any | None = None,
    instances: Any | None = None,
    cannot_link: Any | None = None,
    must_link: Any | None = None,
) -> np.ndarray:
    """Cluster one window's embeddings (N, D) into identities: (N,) int64 labels 0..K-1.

    With ``panels`` (N,) the clustering is constrained: two rows of one panel never share an identity (two
    character instances of one panel are two characters; see :func:`panel_conflicts`, ``instances`` (N,)
    lets the same instance appear twice). Without, it is plain agglomerative clustering. ``cannot_link`` and
    ``must_link`` (N, N) bool add a reviewer's constraints (:func:`constrained_agglomerative`); None adds none.

    Rows are L2-normalised first; clusters merge while their linkage distance is below ``threshold`` (strictly,
    as scikit-learn's ``AgglomerativeClustering(distance_threshold=...)``, which the tests compare against).
    Labels are numbered in order of each cluster's first row. N = 0 gives an empty array, N = 1 [0].
    scipy, not scikit-learn: importing ``sklearn.cluster`` is slow, and every labeling actor and task pays it.
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
    if panels is not None or cannot_link is not None or must_link is not None:
        if panels is not None and len(np.asarray(panels).reshape(-1)) != len(points):
            raise ValueError(f"panels must have {len(points)} rows")
        blocked = panel_conflicts(panels, instances) if panels is not None else np.zeros((len(points),) * 2, bool)
        if cannot_link is not None:
            blocked = blocked | np.asarray(cannot_link, bool)
        return constrained_agglomerative(squareform(pdist(points, metric=metric)), threshold, linkage,
                                         blocked, must_link)
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
    members: list[dict[str, str]] | None = None,
    distance: str = "centroid",
    constraint: str = "hard",
    soft_penalty: float = 0.5,
) -> np.ndarray:
    """Series-level identities: cluster the centroids of every window's clusters, per series.

    ``distance`` says what two window clusters' distance is (``centroid``, ``members``, ``rerank``; see
    :mod:`reid.core.linking`; ``metric`` applies to ``centroid`` alone, the others are Euclidean on unit vectors);
    ``constraint="soft"`` turns the cannot-link block into ``soft_penalty`` added to the distance of conflicting
    clusters.

    With ``members`` (one ``{panel_id: instance key}`` map per row) linking is constrained: two window
    clusters that hold different instances of one panel are never linked (:func:`cluster_conflicts`), so a
    series identity never holds two characters of one panel. Every window cluster gets exactly one series
    identity either way.

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
    if members is not None and len(members) != len(points):
        raise ValueError(f"members must have {len(points)} entries, got {len(members)}")
    identities = np.empty(len(points), dtype=np.int64)
    next_identity = 0
    for series in _in_first_seen_order(series_ids):
        rows = np.flatnonzero(series_ids == series)
        # One key per window cluster, numbered in order of first appearance.
        keys = _first_seen_order(_pair_codes(window_ids[rows], window_labels[rows]))
        conflicts = None
        if members is not None:
            key_members: list[dict[str, str]] = [{} for _ in range(int(keys.max()) + 1)]
            for row, key in zip(rows, keys, strict=True):
                key_members[key].update(members[row])
            conflicts = cluster_conflicts(key_members)
        if distance != "centroid" or constraint != "hard":
            cluster_of_key = _link_series_keys(points[rows], keys, conflicts, threshold, linkage, distance,
                                               constraint, soft_penalty)
        else:
            centroids = np.stack([points[rows[keys == k]].mean(axis=0) for k in range(keys.max() + 1)])
            cluster_of_key = assign_window(centroids, threshold, metric, linkage) if conflicts is None else \
                constrained_agglomerative(squareform(pdist(_unit_rows(centroids), metric=metric)), threshold,
                                          linkage, conflicts)
        identities[rows] = next_identity + cluster_of_key[keys]
        next_identity += int(cluster_of_key.max()) + 1
    return identities


def _link_series_keys(points: np.ndarray, keys: np.ndarray, conflicts: np.ndarray | None, threshold: float,
                      linkage: str, distance: str, constraint: str, soft_penalty: float) -> np.ndarray:
    """Series identity of each window cluster (key) of one series, with another distance or a soft constraint
    (soft: conflicting clusters linked on the evidence are split apart again, :func:`reid.core.linking.split_conflicts`).
    ``conflicts`` (K, K): the clusters' cannot-links, None for none."""
    from reid.core.linking import LINK_CONSTRAINTS, soften, split_conflicts, window_identity_distances

    if constraint not in LINK_CONSTRAINTS:
        raise ValueError(f"constraint={constraint!r}: expected one of {LINK_CONSTRAINTS}")
    d = window_identity_distances(points, keys, distance)
    if conflicts is None:
        return constrained_agglomerative(d, threshold, linkage)
    if constraint == "soft":
        linked = constrained_agglomerative(soften(d, conflicts, soft_penalty), threshold, linkage)
        return _first_seen_order(split_conflicts(linked, d, conflicts))
    return constrained_agglomerative(d, threshold, linkage, conflicts)


def _checked_inputs(distances: np.ndarray, linkage: str, cannot_link: np.ndarray | None,
                    must_link: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """(a float copy of the distances, the symmetric cannot-link matrix, the must-link pairs i < j) of
    :func:`constrained_agglomerative`, each checked for its shape."""
    if linkage not in LINKAGES:
        raise ValueError(f"linkage={linkage!r}: expected one of {LINKAGES}")
    d = np.array(distances, dtype=np.float64, copy=True)
    n = d.shape[0]
    if d.shape != (n, n):
        raise ValueError(f"distances must be square, got shape {d.shape}")
    blocked = np.zeros((n, n), bool) if cannot_link is None else np.array(cannot_link, bool, copy=True)
    if blocked.shape != (n, n):
        raise ValueError(f"cannot_link must be ({n}, {n}), got {blocked.shape}")
    blocked |= blocked.T
    if must_link is not None and np.shape(must_link) != (n, n):
        raise ValueError(f"must_link must be ({n}, {n}), got {np.shape(must_link)}")
    forced = list(zip(*np.nonzero(np.triu(np.asarray(must_link, bool), 1)), strict=True)) \
        if must_link is not None else []
    return d, blocked, forced


def constrained_agglomerative(
    distances: np.ndarray, threshold: float, linkage: str = "average", cannot_link: np.ndarray | None = None,
    must_link: np.ndarray | None = None,
) -> np.ndarray:
    """Agglomerative clustering of a square distance matrix with cannot-link constraints: (N,) labels.

    distances (N, N) symmetric; cannot_link (N, N) bool, True where two rows may never share a cluster (it
    propagates: a cluster cannot merge with another if any pair of their members cannot link). At each step
    the closest allowed pair of clusters merges, while its linkage distance is strictly below ``threshold``
    (Lance-Williams updates: average weighs by cluster size, complete takes the max, single the min).
    Without constraints this is scipy's agglomerative clustering cut at the threshold (tests compare).
    Labels are numbered in order of each cluster's first row. O(N^2) memory, O(N^3) time in the worst case:
    fine for a window (tens of rows) and a series' window clusters (hundreds to a few thousand).

    must_link (N, N) bool, True where a person said two rows are one character (review corrections): those
    pairs merge first, whatever their distance, with the same linkage updates, unless a cannot-link between
    their clusters forbids it (cannot-link wins: two instances of one panel are never one character). None
    (the default) adds nothing.
    """
    d, blocked, forced = _checked_inputs(distances, linkage, cannot_link, must_link)
    n = d.shape[0]
    if n < 2:
        return np.zeros(n, dtype=np.int64)
    sizes = np.ones(n)
    alive = np.ones(n, bool)
    parent = np.arange(n)
    masked = d.copy()
    masked[blocked] = np.inf
    np.fill_diagonal(masked, np.inf)
    while True:
        if forced:  # must-links first: the pair's current clusters, when they are apart and allowed to meet
            a, b = (int(parent[i]) for i in forced.pop(0))
            if a == b or blocked[a, b]:
                continue
        else:
            flat = int(np.argmin(masked))
            a, b = divmod(flat, n)
            if not masked[a, b] < threshold:
                break
        a, b = min(a, b), max(a, b)
        if linkage == "average":
            merged = (sizes[a] * d[a] + sizes[b] * d[b]) / (sizes[a] + sizes[b])
        elif linkage == "complete":
            merged = np.maximum(d[a], d[b])
        else:
            merged = np.minimum(d[a], d[b])
        d[a], d[:, a] = merged, merged
        blocked[a] |= blocked[b]
        blocked[:, a] = blocked[a]
        sizes[a] += sizes[b]
        alive[b] = False
        parent[parent == b] = a
        row = np.where(alive & ~blocked[a], d[a], np.inf)
        row[a] = np.inf
        masked[a], masked[:, a] = row, row
        masked[b], masked[:, b] = np.inf, np.inf
    return _first_seen_order(parent)


def panel_conflicts(panels: Any, instances: Any | None = None) -> np.ndarray:
    """Cannot-link matrix of rows that stand in one panel: (N,), (N,) -> (N, N) bool.

    Two rows of one panel are two different characters (a face and its body are one row already), unless
    ``instances`` says they are the same character instance (the same instance seen in two overlapping
    windows). Rows are window clusters when each "row" carries a set: see :func:`cluster_conflicts`.
    """
    panels = np.asarray(panels, dtype=object).reshape(-1)
    same_panel = panels[:, None] == panels[None, :]
    if instances is not None:
        inst = np.asarray(instances, dtype=object).reshape(-1)
        same_panel &= inst[:, None] != inst[None, :]
    np.fill_diagonal(same_panel, False)
    return same_panel


def cluster_conflicts(members: list[dict[str, str]]) -> np.ndarray:
    """Cannot-link matrix of clusters given as {panel_id: instance key} maps (one per cluster): (K, K) bool.

    Two clusters conflict when some panel holds a different instance in each (two characters of one panel);
    the same instance in both (overlapping windows) is no conflict.
    """
    k = len(members)
    out = np.zeros((k, k), bool)
    by_panel: dict[str, list[tuple[int, str]]] = {}
    for c, panels in enumerate(members):
        for panel, key in panels.items():
            by_panel.setdefault(panel, []).append((c, key))
    for entries in by_panel.values():
        for i, (ci, ki) in enumerate(entries):
            for cj, kj in entries[i + 1:]:
                if ci != cj and ki != kj:
                    out[ci, cj] = out[cj, ci] = True
    return out


def _in_first_seen_order(values: np.ndarray) -> list[Any]:
    _, first = np.unique(values, return_index=True)
    return [values[i] for i in sorted(first)]


def _pair_codes(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """One int per distinct (first, second) pair."""
    a = np.unique(first, return_inverse=True)[1].reshape(-1)
    b = np.unique(second, return_inverse=True)[1].reshape(-1)
    return a * (b.max() + 1) + b
