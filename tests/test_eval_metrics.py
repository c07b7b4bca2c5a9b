"""Retrieval metrics against a brute-force ranking, B-cubed against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score

from reid.core.eval.metrics import bcubed, clustering_scores, retrieval_metrics


def brute_force_retrieval(points: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """P@1, R-precision, MAP@R and MRR of one sequence, by sorting every query's neighbours."""
    points = points / np.linalg.norm(points, axis=1, keepdims=True)
    per_query: dict[str, list[float]] = {"p1": [], "rp": [], "map_r": [], "mrr": []}
    for q in range(len(points)):
        others = [i for i in range(len(points)) if i != q]
        relevant_total = sum(labels[i] == labels[q] for i in others)
        if relevant_total == 0:
            continue  # a lone query has no answer; the metrics skip it
        ranked = sorted(others, key=lambda i: np.linalg.norm(points[i] - points[q]))
        hits = [labels[i] == labels[q] for i in ranked]
        per_query["p1"].append(float(hits[0]))
        per_query["rp"].append(sum(hits[:relevant_total]) / relevant_total)
        precisions = [sum(hits[: k + 1]) / (k + 1) for k in range(relevant_total) if hits[k]]
        per_query["map_r"].append(sum(precisions) / relevant_total)
        per_query["mrr"].append(1.0 / (hits.index(True) + 1))
    return {k: float(np.mean(v)) for k, v in per_query.items()}


def test_retrieval_metrics_match_brute_force_per_sequence_average() -> None:
    rng = np.random.default_rng(0)
    sizes = {"s0": (9, 3), "s1": (7, 2), "s2": (6, 4)}  # instances, identities per sequence
    points, labels, sequences, expected = [], [], [], []
    for sequence, (n, k) in sizes.items():
        seq_points = rng.normal(size=(n, 4))
        seq_labels = np.array([i % k for i in range(n)])
        points.append(seq_points)
        labels += [f"char{c}" for c in seq_labels]  # string charIds, reused across sequences
        sequences += [sequence] * n
        expected.append(brute_force_retrieval(seq_points, seq_labels))
    result = retrieval_metrics(np.concatenate(points), np.array(labels), np.array(sequences))
    assert result["num_sequences"] == 3
    for ours, theirs in [
        ("precision_at_1", "p1"),
        ("r_precision", "rp"),
        ("mean_average_precision_at_r", "map_r"),
        ("mean_reciprocal_rank", "mrr"),
    ]:
        assert result[ours] == pytest.approx(np.mean([e[theirs] for e in expected]), abs=1e-6), ours


def test_labels_are_compared_within_a_sequence_only() -> None:
    # Two sequences with nearly the same points but swapped charIds: "a" of one sequence is not "a" of
    # the other. Pooled, every query's twin in the other sequence would be a wrong nearest neighbour.
    rng = np.random.default_rng(1)
    block = np.concatenate([rng.normal(0, 0.01, (3, 4)) + 5, rng.normal(0, 0.01, (3, 4)) - 5])
    labels = np.array(["a"] * 3 + ["b"] * 3 + ["b"] * 3 + ["a"] * 3)
    sequences = np.array([0] * 6 + [1] * 6)
    result = retrieval_metrics(np.concatenate([block, block + 1e-3]), labels, sequences)
    assert result["num_sequences"] == 2
    for name in ("precision_at_1", "r_precision", "mean_average_precision_at_r", "AMI", "NMI"):
        assert result[name] == pytest.approx(1.0), name  # pooled, the other sequence's twins would count


def test_sequences_with_one_identity_are_skipped() -> None:
    rng = np.random.default_rng(2)
    points = rng.normal(size=(7, 3))
    labels = np.array([0, 0, 0, 1, 2, 1, 2])
    sequences = np.array(["solo"] * 3 + ["pair"] * 4)
    result = retrieval_metrics(points, labels, sequences)
    assert result["num_sequences"] == 1
    assert result["precision_at_1"] == pytest.approx(brute_force_retrieval(points[3:], labels[3:])["p1"])
    empty = retrieval_metrics(points[:3], labels[:3], sequences[:3])
    assert empty["num_sequences"] == 0 and np.isnan(empty["precision_at_1"])


def test_bcubed_hand_computed() -> None:
    # pred clusters {0,1,2}, {3,4}; classes {0,1}, {2,3,4}.
    # precision per item: 2/3, 2/3, 1/3, 1, 1 -> 11/15; recall: 1, 1, 1/3, 2/3, 2/3 -> 11/15.
    p, r, f = bcubed([0, 0, 0, 1, 1], ["x", "x", "y", "y", "y"])
    assert (p, r, f) == pytest.approx((11 / 15, 11 / 15, 11 / 15))
    # One big cluster over two classes of 2: precision 1/2 each, recall 1 -> F1 = 2/3.
    assert bcubed([5, 5, 5, 5], [0, 0, 1, 1]) == pytest.approx((0.5, 1.0, 2 / 3))
    # All singletons: precision 1, recall (1/2 + 1/2 + 1 ) / 3 = 2/3 -> F1 = 0.8.
    assert bcubed([0, 1, 2], [0, 0, 1]) == pytest.approx((1.0, 2 / 3, 0.8))


def test_bcubed_matches_item_loop_on_random_labels() -> None:
    rng = np.random.default_rng(3)
    pred, labels = rng.integers(0, 5, 40), rng.integers(0, 4, 40)
    precision = np.mean(
        [np.sum((pred == pred[i]) & (labels == labels[i])) / np.sum(pred == pred[i]) for i in range(40)]
    )
    recall = np.mean(
        [np.sum((pred == pred[i]) & (labels == labels[i])) / np.sum(labels == labels[i]) for i in range(40)]
    )
    assert bcubed(pred, labels) == pytest.approx(
        (precision, recall, 2 * precision * recall / (precision + recall))
    )


def test_clustering_scores_average_per_group() -> None:
    rng = np.random.default_rng(4)
    groups = np.repeat(["w0", "w1", "w2"], [10, 6, 8])
    labels, pred = rng.integers(0, 3, 24), rng.integers(0, 3, 24)
    result = clustering_scores(pred, labels, groups)
    rows = [np.flatnonzero(groups == g) for g in ("w0", "w1", "w2")]
    assert result["num_groups"] == 3
    assert result["ARI"] == pytest.approx(np.mean([adjusted_rand_score(labels[r], pred[r]) for r in rows]))
    assert result["AMI"] == pytest.approx(
        np.mean([adjusted_mutual_info_score(labels[r], pred[r]) for r in rows])
    )
    assert result["bcubed_f1"] == pytest.approx(np.mean([bcubed(pred[r], labels[r])[2] for r in rows]))
    # Identity numbers are arbitrary per group: a relabelled perfect prediction scores 1 everywhere.
    perfect = clustering_scores((labels + 7) * 3, labels, groups)
    assert all(perfect[k] == pytest.approx(1.0) for k in ("ARI", "AMI", "bcubed_precision", "bcubed_recall"))


def test_mismatched_lengths_raise() -> None:
    with pytest.raises(ValueError):
        clustering_scores([0, 1], [0, 1, 1], [0, 0, 0])
    with pytest.raises(ValueError):
        retrieval_metrics(np.zeros((3, 2)), [0, 1], [0, 0, 0])
