"""Series linking's distances and constraints (reid/core/linking.py, reid.core.assign.link_windows): each option against a
hand-made case where linking on centroids with a hard cannot-link gets it wrong."""

from __future__ import annotations

import numpy as np
import pytest

from reid.core.assign import link_windows
from reid.core.linking import (
    kreciprocal_distances,
    member_distances,
    pairwise_euclidean,
    split_conflicts,
    window_identity_distances,
)


def _unit(*vectors) -> np.ndarray:
    points = np.asarray(vectors, float)
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def test_members_link_one_character_seen_at_two_scales():
    """Window 1 shows X as a close-up (view e1) and a full figure (view e2); window 2 shows X only as a full figure.
    Their centres are 0.77 apart, their full figures 0.05: members link them, centres do not; Y stays apart."""
    points = _unit([1, 0, 0], [0, 1, 0], [0.05, 1, 0], [0, 0, 1], [0, 0.05, 1])
    window_labels = np.array([0, 0, 0, 0, 0])
    window_ids = np.array(["w1", "w1", "w2", "w3", "w3"], object)
    series = np.zeros(5, int)
    centroid = link_windows(points, window_labels, window_ids, series, threshold=0.5)
    members = link_windows(points, window_labels, window_ids, series, threshold=0.5, distance="members")
    assert len(set(centroid[:3])) == 2  # X split in two
    assert len(set(members[:3])) == 1 and members[3] == members[4] != members[0]


def test_member_distance_is_the_smaller_groups_mean_nearest_crop():
    points = _unit([1, 0], [0, 1], [0.1, 1], [1, 1])
    keys = np.array([0, 0, 1, 2])
    d = member_distances(points, keys)
    crop = pairwise_euclidean(points, points)
    assert d[0, 1] == pytest.approx(min(crop[2, 0], crop[2, 1]))
    assert d[1, 2] == pytest.approx(crop[2, 3]) and np.allclose(d, d.T) and np.all(np.diag(d) == 0)


def test_soft_cannot_link_keeps_one_mistake_from_splitting_a_character():
    """Five window identities of X; k3 took a crop of another character in a panel that k1 also shows (a
    conflict). Hard cannot-link merges k3 with its nearest k4 first and then blocks both from the rest: X ends in
    two identities of 3 and 2. Soft links all five on the evidence, then takes out only k3."""
    rng = np.random.default_rng(0)
    base = _unit([1, 0, 0, 0])[0]
    offsets = np.array([[0, 0.02, 0, 0], [0, 0, 0.03, 0], [0, 0.30, 0.30, 0], [0, 0.30, 0.31, 0], [0, 0, 0, 0.04]])
    points = _unit(*(base + offsets + rng.normal(0, 1e-4, (5, 4))))
    window_ids = np.array([f"w{i}" for i in range(5)], object)
    members = [{"p1": "a"}, {"p2": "c"}, {"p1": "b"}, {"p3": "d"}, {"p4": "e"}]
    args = (points, np.zeros(5, int), window_ids, np.zeros(5, int))
    hard = link_windows(*args, threshold=0.5, members=members)
    soft = link_windows(*args, threshold=0.5, members=members, constraint="soft", soft_penalty=0.5)
    assert sorted(np.unique(hard, return_counts=True)[1]) == [2, 3]
    assert sorted(np.unique(soft, return_counts=True)[1]) == [1, 4] and soft[2] != soft[0]
    assert soft[0] == soft[1] == soft[3] == soft[4]


def test_split_conflicts_never_leaves_two_conflicting_groups_together():
    rng = np.random.default_rng(1)
    for _ in range(20):
        k = int(rng.integers(2, 12))
        conflicts = np.triu(rng.random((k, k)) < 0.2, 1)
        conflicts |= conflicts.T
        distances = rng.random((k, k))
        distances = (distances + distances.T) / 2
        labels = split_conflicts(rng.integers(0, 3, k), distances, conflicts)
        same = labels[:, None] == labels[None, :]
        assert not (same & conflicts).any()


def test_rerank_links_mutual_neighbours_and_keeps_crowds_apart():
    """Two small groups of one character each (A: rows 0-2, B: rows 3-5) in a 2-D ring of unrelated identities.
    The re-ranked distance of A and B's members is smaller than their raw distance relative to the crowd's."""
    angles = np.deg2rad([0, 4, 8, 30, 34, 38, 90, 150, 210, 270, 330])
    points = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    raw = pairwise_euclidean(points, points)
    reranked = kreciprocal_distances(raw, k1=3, k2=1, lambda_value=0.3)
    assert np.allclose(reranked, reranked.T) and np.all(np.diag(reranked) == 0)
    within = reranked[0, 1], reranked[3, 4]
    assert max(within) < reranked[0, 6] and max(within) < reranked[3, 6]
    # a member of A is nearer to its own group than to any unrelated identity, in both distances
    assert reranked[0, 1:3].max() < reranked[0, 6:].min()


def test_unknown_link_distance_is_refused():
    with pytest.raises(ValueError, match="link distance"):
        window_identity_distances(np.eye(2), np.array([0, 1]), "nearest")
