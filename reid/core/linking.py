"""Distances between window identities for series linking (Ray-free, numpy only).

Linking clusters the identities that each window found (a few crops of one character) into series identities.
What it clusters on is a distance between two window identities; three are offered:

- ``centroid``: the distance of their re-normalised mean embeddings (the default, and what linking always did);
- ``members``: how far each crop of the smaller identity is from its nearest crop in the other, on average.
  One character drawn as a close-up in one window and as a small figure in another has far-apart centroids,
  but its crops that look alike (the same view, the same scale) are still close: linking through members
  finds them where centroids do not;
- ``rerank``: the centroid distance re-ranked with k-reciprocal neighbours (Zhong et al., CVPR 2017, as the
  person re-identification toolkits do before clustering): two identities are close when their neighbourhoods
  overlap (Jaccard distance of their k-reciprocal sets), mixed with the original distance by ``lambda_value``.

Cannot-link (two window identities that hold different instances of one panel) is hard by default: such a
pair never joins, and the block propagates to every merge. ``soft`` adds ``soft_penalty`` to the pair's
distance instead, so that the evidence of many members can outweigh one conflicting pair (a hard block carries
one early mistake, a window identity that took a crop of another character, through a whole book); then
:func:`split_conflicts` takes out of each linked identity the fewest window identities that keep it from holding
two characters of one panel, so the guarantee of the output is the same as with hard cannot-link.
"""

from __future__ import annotations

import numpy as np

LINK_DISTANCES = ("centroid", "members", "rerank")
LINK_CONSTRAINTS = ("hard", "soft")
# how series were linked before linking was calibrated, and what a model without a calibrated choice uses
DEFAULT_LINKING = {"link_distance": "centroid", "link_constraint": "hard"}


def pairwise_euclidean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances of unit-norm rows: (N, D), (M, D) -> (N, M)."""
    return np.sqrt(np.maximum(2.0 - 2.0 * np.clip(a @ b.T, -1.0, 1.0), 0.0))


def centroid_distances(points: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Distances of the re-normalised centroids of the groups ``keys`` (0..K-1) of unit-norm ``points``:
    (K, K)."""
    centroids = np.stack([points[keys == k].mean(axis=0) for k in range(int(keys.max()) + 1)])
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    return pairwise_euclidean(centroids, centroids)


def member_distances(points: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """(K, K): for two groups, the mean over the crops of the smaller group of each one's distance to its
    nearest crop in the other group (the larger group's rarer views need no match). Zero on the diagonal."""
    k = int(keys.max()) + 1
    order = np.argsort(keys, kind="stable")
    bounds = np.searchsorted(keys[order], np.arange(k + 1))
    crop = pairwise_euclidean(points[order], points[order])
    out = np.zeros((k, k))
    for i in range(k):
        rows = crop[bounds[i]:bounds[i + 1]]
        for j in range(i + 1, k):
            block = rows[:, bounds[j]:bounds[j + 1]]
            nearest = block.min(axis=1) if block.shape[0] <= block.shape[1] else block.min(axis=0)
            out[i, j] = out[j, i] = float(nearest.mean())
    return out


def kreciprocal_distances(distances: np.ndarray, k1: int = 6, k2: int = 3, lambda_value: float = 0.3
                          ) -> np.ndarray:
    """k-reciprocal re-ranking of a square distance matrix (Zhong et al. 2017): (K, K) -> (K, K).

    Each row's k1-reciprocal neighbours (expanded by the reciprocal sets of its members that overlap it by
    more than two thirds) weigh a Gaussian-kernel vector; rows are smoothed over their k2 nearest neighbours
    (query expansion); the Jaccard distance of those vectors is mixed with the original distance:
    ``(1 - lambda) * jaccard + lambda * original``. Symmetric, zero on the diagonal, in [0, max(1, max d)].
    """
    d = np.asarray(distances, np.float64)
    n = d.shape[0]
    if n < 3:
        return d.copy()
    k1, k2 = max(1, min(k1, n - 1)), max(1, min(k2, n))
    original = d / max(float(d.max()), 1e-12)
    rank = np.argsort(original, axis=1, kind="stable")
    weights = np.zeros((n, n))
    for i in range(n):
        forward = rank[i, :k1 + 1]
        reciprocal = forward[np.any(rank[forward, :k1 + 1] == i, axis=1)]
        expanded = reciprocal
        half = max(1, int(round(k1 / 2)))
        for candidate in reciprocal:
            cf = rank[candidate, :half + 1]
            cr = cf[np.any(rank[cf, :half + 1] == candidate, axis=1)]
            if len(np.intersect1d(cr, reciprocal)) > 2 / 3 * len(cr):
                expanded = np.union1d(expanded, cr)
        expanded = np.unique(expanded)
        w = np.exp(-original[i, expanded])
        weights[i, expanded] = w / w.sum()
    if k2 > 1:
        weights = np.stack([weights[rank[i, :k2]].mean(axis=0) for i in range(n)])
    minimum = np.minimum(weights[:, None, :], weights[None, :, :]).sum(axis=2)
    jaccard = 1.0 - minimum / np.maximum(2.0 - minimum, 1e-12)
    out = (1 - lambda_value) * jaccard + lambda_value * d
    out = (out + out.T) / 2
    np.fill_diagonal(out, 0.0)
    return out


def window_identity_distances(points: np.ndarray, keys: np.ndarray, mode: str = "centroid",
                              rerank_k: int = 6) -> np.ndarray:
    """The (K, K) distance between the groups ``keys`` (0..K-1) of unit-norm ``points`` (N, D) that linking
    clusters: ``mode`` is one of :data:`LINK_DISTANCES` (module docstring)."""
    if mode not in LINK_DISTANCES:
        raise ValueError(f"link distance {mode!r}: expected one of {LINK_DISTANCES}")
    if mode == "members":
        return member_distances(points, keys)
    centroids = centroid_distances(points, keys)
    return kreciprocal_distances(centroids, k1=rerank_k) if mode == "rerank" else centroids


def soften(distances: np.ndarray, conflicts: np.ndarray, penalty: float) -> np.ndarray:
    """``distances`` with ``penalty`` added where two groups conflict (soft cannot-link): (K, K)."""
    return np.asarray(distances, np.float64) + penalty * np.asarray(conflicts, bool)


def split_conflicts(labels: np.ndarray, distances: np.ndarray, conflicts: np.ndarray) -> np.ndarray:
    """Labels (K,) of linked groups such that no label holds two conflicting groups: (K,) int64.

    Within each label, groups are kept nearest-first (mean distance to the label's other groups); a group that
    conflicts with one already kept starts, with the others it cannot join, a new label, split the same way.
    """
    labels = np.asarray(labels, np.int64).copy()
    next_label = int(labels.max()) + 1 if len(labels) else 0
    pending = [np.flatnonzero(labels == lab) for lab in np.unique(labels)]
    while pending:
        members = pending.pop()
        if len(members) < 2 or not conflicts[np.ix_(members, members)].any():
            continue
        spread = distances[np.ix_(members, members)].mean(axis=1)
        kept: list[int] = []
        rest: list[int] = []
        for g in members[np.argsort(spread, kind="stable")]:
            (rest if kept and conflicts[g, kept].any() else kept).append(int(g))
        labels[rest] = next_label
        next_label += 1
        pending.append(np.asarray(rest))
    return labels
