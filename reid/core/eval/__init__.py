"""Evaluation of embeddings and identity assignments; independent of training."""

from reid.core.eval.metrics import bcubed, clustering_scores, retrieval_metrics

__all__ = ["bcubed", "clustering_scores", "retrieval_metrics"]
