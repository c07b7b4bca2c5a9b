"""The assigner (scipy's hierarchy) against scikit-learn's AgglomerativeClustering as an independent reference."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import AgglomerativeClustering

from reid.core.assign import assign_window, link_windows


def canonical(labels) -> list[int]:
    """Partition as labels numbered by first appearance (so two labelings compare equal)."""
    seen: dict = {}
    return [seen.setdefault(x, len(seen)) for x in np.asarray(labels).tolist()]


def sklearn_clusters(points: np.ndarray, threshold: float, metric: str, method: str) -> np.ndarray:
    unit = points / np.linalg.norm(points, axis=1, keepdims=True)
    return AgglomerativeClustering(n_clusters=None, distance_threshold=threshold, metric=metric,
                                   linkage=method).fit_predict(unit)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(
    "metric, method, threshold",
    [
        ("euclidean", "average", 0.82),
        ("cosine", "average", 0.34),
        ("euclidean", "complete", 1.0),
        ("euclidean", "single", 0.6),
    ],
)
def test_matches_sklearn(seed: int, metric: str, method: str, threshold: float) -> None:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, 8))
    points = np.repeat(centres, 5, axis=0) + rng.normal(scale=0.35, size=(20, 8))
    rng.shuffle(points)
    got = assign_window(points, threshold=threshold, metric=metric, linkage=method)
    want = sklearn_clusters(points, threshold, metric, method)
    assert canonical(got) == canonical(want)
    assert 1 < len(set(got.tolist())) < 20  # the threshold actually cuts the tree
    assert got.tolist() == canonical(got)  # labels are numbered in order of first appearance


def test_threshold_is_strict_like_sklearn() -> None:
    square = np.array([[1.0, 0.0], [0.0, 1.0]])  # cosine distance exactly 1.0
    assert assign_window(square, threshold=1.0, metric="cosine").tolist() == [0, 1]
    assert canonical(sklearn_clusters(square, 1.0, "cosine", "average")) == [0, 1]
    assert assign_window(square, threshold=1.0 + 1e-9, metric="cosine").tolist() == [0, 0]


def test_small_and_degenerate_windows() -> None:
    assert assign_window(np.zeros((0, 4))).shape == (0,)
    assert assign_window(np.ones((1, 4))).tolist() == [0]
    assert assign_window(np.array([[1.0, 0.0], [2.0, 0.0]])).tolist() == [0, 0]  # same direction
    assert assign_window(np.array([[1.0, 0.0], [-1.0, 0.0]])).tolist() == [0, 1]
    assert assign_window(np.array([[1.0, 0.0], [-1.0, 0.0]])).dtype == np.int64


def test_rejects_unknown_options() -> None:
    with pytest.raises(ValueError, match="metric"):
        assign_window(np.ones((3, 2)), metric="manhattan")
    with pytest.raises(ValueError, match="linkage"):
        assign_window(np.ones((3, 2)), linkage="ward")


def test_link_windows_matches_sklearn_on_centroids() -> None:
    rng = np.random.default_rng(10)
    identities = rng.normal(size=(3, 16))
    rows = []  # (series, window, true identity)
    for series in ("A", "B"):
        for window in range(3):
            for identity in rng.choice(3, size=2, replace=False):
                rows += [(series, f"{series}{window}", identity)] * 3
    series_ids = np.array([r[0] for r in rows])
    window_ids = np.array([r[1] for r in rows])
    truth = np.array([r[2] for r in rows])
    points = identities[truth] + rng.normal(scale=0.2, size=(len(rows), 16))
    window_labels = np.zeros(len(rows), dtype=np.int64)
    for window in np.unique(window_ids):
        members = window_ids == window
        window_labels[members] = assign_window(points[members])

    got = link_windows(points, window_labels, window_ids, series_ids, threshold=0.82)

    unit = points / np.linalg.norm(points, axis=1, keepdims=True)
    for series in ("A", "B"):
        members = np.flatnonzero(series_ids == series)
        keys = sorted({(window_ids[i], window_labels[i]) for i in members})
        centroids = []
        for key in keys:
            mean = unit[[i for i in members if (window_ids[i], window_labels[i]) == key]].mean(axis=0)
            centroids.append(mean / np.linalg.norm(mean))
        reference = sklearn_clusters(np.array(centroids), 0.82, "euclidean", "average")
        want = [reference[keys.index((window_ids[i], window_labels[i]))] for i in members]
        assert canonical(got[members]) == canonical(want)
        assert canonical(got[members]) == canonical(truth[members])  # well separated: the truth is found
    assert not set(got[series_ids == "A"]) & set(got[series_ids == "B"])  # series never share an identity


def test_link_windows_checks_lengths_and_handles_empty() -> None:
    assert link_windows(np.zeros((0, 3)), [], [], []).shape == (0,)
    with pytest.raises(ValueError, match="rows"):
        link_windows(np.ones((2, 3)), [0], [0, 0], [0, 0])
