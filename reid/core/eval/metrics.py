"""Re-ID evaluation on any embeddings: retrieval metrics and clustering scores, within sequences.

Labels are relative to a sequence (docs/DATA.md), so every metric is computed inside one sequence (or
one window / group) and then averaged over them.

torch, pytorch-metric-learning and scikit-learn are imported by the functions that use them: the label job's
per-series tasks import this module, and their worker processes should not pay those imports unless they score.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

RETRIEVAL_METRICS = (
    "precision_at_1",
    "mean_average_precision_at_r",
    "r_precision",
    "mean_reciprocal_rank",
    "AMI",
    "NMI",
)


def _kmeans(embeddings: torch.Tensor, num_clusters: int) -> np.ndarray:
    """Seeded k-means for AccuracyCalculator's AMI/NMI (faiss is not a dependency)."""
    from sklearn.cluster import KMeans

    points = embeddings.detach().cpu().numpy()
    return KMeans(n_clusters=num_clusters, n_init=10, random_state=0).fit_predict(points)


def _numpy(values: Any) -> np.ndarray:
    """A tensor or array-like as a numpy array."""
    torch = sys.modules.get("torch")  # a tensor exists only once torch is imported
    return values.detach().cpu().numpy() if torch and isinstance(values, torch.Tensor) else np.asarray(values)


def _groups(group_ids: Any, num_rows: int) -> list[np.ndarray]:
    """Row indices of each group, in order of the groups' first appearance."""
    ids = _numpy(group_ids).reshape(-1)
    if len(ids) != num_rows:
        raise ValueError(f"{len(ids)} group ids for {num_rows} rows")
    _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    order = np.argsort(first)
    return [np.flatnonzero(inverse == g) for g in order]


def _as_int_labels(labels: Any) -> np.ndarray:
    """Any labels (ints, strings) -> ints 0..K-1."""
    return np.unique(_numpy(labels).reshape(-1), return_inverse=True)[1].reshape(-1)


def retrieval_metrics(
    embeddings: torch.Tensor | np.ndarray, labels: Any, sequence_ids: Any
) -> dict[str, float]:
    """pytorch-metric-learning ``AccuracyCalculator`` metrics per sequence, averaged over sequences.

    embeddings (N, D) (Euclidean kNN on L2-normalised rows, as the assigner uses); labels (N,)
    identities (charIds, compared only within a sequence); sequence_ids (N,). Query set = reference
    set (self excluded); AMI/NMI cluster each sequence with seeded k-means (k = its identities). Sequences
    with fewer than 2 identities are skipped; a metric that is undefined in a sequence (every identity
    seen once, for the kNN metrics) is left out of that metric's mean. Returns the metrics of
    ``RETRIEVAL_METRICS`` (NaN if no sequence defines them) and ``num_sequences`` (sequences used).
    """
    import torch
    from pytorch_metric_learning.distances import LpDistance
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    points = torch.as_tensor(_numpy(embeddings), dtype=torch.float32)
    label_values = _numpy(labels).reshape(-1)
    if points.dim() != 2 or len(points) != len(label_values):
        raise ValueError(f"embeddings {tuple(points.shape)} and labels ({len(label_values)},) do not match")
    calculator = AccuracyCalculator(
        include=RETRIEVAL_METRICS,
        k=None,
        device=torch.device("cpu"),
        knn_func=CustomKNN(LpDistance(normalize_embeddings=True)),
        kmeans_func=_kmeans,
    )
    per_sequence: list[dict[str, float]] = []
    for rows in _groups(sequence_ids, len(label_values)):
        sequence_labels = _as_int_labels(label_values[rows])
        if len(np.unique(sequence_labels)) < 2:
            continue
        per_sequence.append(calculator.get_accuracy(points[rows], torch.from_numpy(sequence_labels)))
    result = {name: mean_over_groups([r[name] for r in per_sequence]) for name in RETRIEVAL_METRICS}
    result["num_sequences"] = len(per_sequence)
    return result


def mean_over_groups(values: list[float]) -> float:
    """Mean of per-group scores, NaN ones (a group where the score is undefined) left out; NaN if none is left."""
    finite = [v for v in values if not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def bcubed(pred: Any, labels: Any) -> tuple[float, float, float]:
    """B-cubed (precision, recall, F1) of a predicted clustering against true labels, (N,), (N,).

    Per item i: precision = |cluster(i) & class(i)| / |cluster(i)|, recall = ... / |class(i)|;
    both averaged over items; F1 is their harmonic mean. Empty input gives NaNs.
    """
    pred_ids, label_ids = _as_int_labels(pred), _as_int_labels(labels)
    if pred_ids.shape != label_ids.shape:
        raise ValueError(f"pred and labels differ in length: {pred_ids.shape} vs {label_ids.shape}")
    n = len(pred_ids)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    joint = np.zeros((pred_ids.max() + 1, label_ids.max() + 1), dtype=np.int64)
    np.add.at(joint, (pred_ids, label_ids), 1)
    overlap = joint[pred_ids, label_ids]  # |cluster(i) & class(i)| per item
    precision = float(np.mean(overlap / joint.sum(axis=1)[pred_ids]))
    recall = float(np.mean(overlap / joint.sum(axis=0)[label_ids]))
    return precision, recall, 2 * precision * recall / (precision + recall)


CLUSTERING_SCORES = ("ARI", "AMI", "bcubed_precision", "bcubed_recall", "bcubed_f1")


def clustering_scores_per_group(pred: Any, labels: Any, group_ids: Any) -> dict[str, list[float]]:
    """Each of :data:`CLUSTERING_SCORES` per group (in sorted group order): pred (N,) predicted identity,
    labels (N,) true identity, group_ids (N,) the window/sequence of each row."""
    from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score

    pred_values, label_values = _numpy(pred).reshape(-1), _numpy(labels).reshape(-1)
    if pred_values.shape != label_values.shape:
        raise ValueError(f"pred and labels differ in shape: {pred_values.shape} vs {label_values.shape}")
    scores: dict[str, list[float]] = {k: [] for k in CLUSTERING_SCORES}
    for rows in _groups(group_ids, len(pred_values)):
        p, y = _as_int_labels(pred_values[rows]), _as_int_labels(label_values[rows])
        scores["ARI"].append(adjusted_rand_score(y, p))
        scores["AMI"].append(adjusted_mutual_info_score(y, p))
        for name, value in zip(("bcubed_precision", "bcubed_recall", "bcubed_f1"), bcubed(p, y), strict=True):
            scores[name].append(value)
    return scores


def clustering_scores(pred: Any, labels: Any, group_ids: Any) -> dict[str, float]:
    """ARI, AMI and B-cubed precision/recall/F1 of predicted identities, per group, averaged over groups.

    pred (N,) predicted identity, labels (N,) true identity, group_ids (N,) the window/sequence of each
    row: predictions and labels are compared only within a group. Returns ``ARI``, ``AMI``,
    ``bcubed_precision``, ``bcubed_recall``, ``bcubed_f1`` and ``num_groups``.
    """
    scores = clustering_scores_per_group(pred, labels, group_ids)
    result: dict[str, float] = {name: mean_over_groups(values) for name, values in scores.items()}
    result["num_groups"] = len(scores["ARI"])
    return result
