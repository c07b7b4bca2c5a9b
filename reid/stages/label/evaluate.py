"""Scoring a labels output against ground truth: annotated sequences (charIds) or true identities (synthetic)."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from reid.core import io
from reid.core.contracts.labels import (
    UNASSIGNED,
    iter_labels,
    labels_output,
    read_embeddings,
)
from reid.stages.label.config import LabelConfig

log = logging.getLogger(__name__)


def evaluate(cfg: LabelConfig, sequences: list) -> tuple[dict[str, float], list[dict[str, float]] | None]:
    """Scores against the ground truth the config names (the annotated ``sequences`` that were labelled, a
    ground-truth CSV): (metrics, per-series quality with a ground-truth CSV, else None)."""
    metrics: dict[str, float] = {}
    per_series = None
    if cfg.sequences:
        metrics.update(evaluate_sequences(cfg.out, sequences))
    if cfg.ground_truth:
        scores, per_series = aggregate_series_figures(cfg.out, cfg.ground_truth)
        metrics.update(scores)
    return metrics, per_series


def evaluate_sequences(labels_root: str, sequences) -> dict[str, float]:
    """ARI, AMI, B-cubed (windows as groups) and retrieval metrics of the labelled annotated windows.

    One item per character instance per window that carries a charId; unassigned ones are counted apart.
    Holds the annotated set (not the corpus) in memory.
    """
    from reid.core.eval.metrics import clustering_scores, retrieval_metrics

    truth = {(inst_id, seq.seq_id): f"{seq.seq_id}|{char.char_id}" for seq in sequences for char in seq.characters
             for inst in char.instances for inst_id in (inst.face, inst.body) if inst_id}
    items: dict[tuple[str, str], tuple[int, str, np.ndarray]] = {}
    unassigned = 0
    for shard, rows in iter_labels(labels_root, ["instance_id", "window_id", "char_key", "identity"]):
        embeddings = read_embeddings(labels_root, shard)
        for r in rows.to_pylist():
            label = truth.get((r["instance_id"], r["window_id"]))
            if label is None:
                continue
            if r["status"] == UNASSIGNED:
                unassigned += 1
                continue
            items.setdefault((r["window_id"], r["char_key"]), (r["identity"], label, embeddings[r["char_key"]]))
    out: dict[str, float] = {"eval_instances": len(items), "eval_unassigned_boxes": unassigned}
    if not items:
        return out
    keys = list(items)
    pred = np.asarray([items[k][0] for k in keys])
    labels = np.asarray([items[k][1] for k in keys])
    groups = np.asarray([k[0] for k in keys])
    out.update(clustering_scores(pred, labels, groups))
    retrieval = retrieval_metrics(np.stack([items[k][2] for k in keys]), labels, groups)
    # AccuracyCalculator's AMI/NMI cluster the embeddings with k-means: not the assigner's AMI above
    out.update({f"kmeans_{k}" if k in ("AMI", "NMI") else k: v for k, v in retrieval.items()})
    return {k: float(v) for k, v in out.items()}


def evaluate_ground_truth(labels_root: str, ground_truth: str) -> dict[str, float]:
    """Window identities (windows as groups) and series identities (series as groups) against true
    identities (``instance_id,identity`` CSV), one item per character instance."""
    return ground_truth_scores(labels_root, ground_truth)[0]


GT_COLUMNS = ["instance_id", "window_id", "char_key", "series_id", "identity", "series_identity"]
FIGURES_DIR = "_figures"
"""Per-series ground-truth figures under the labels root, one ``<series>.json`` each, written by the task that
finished that series (:func:`write_series_figures`); the driver only aggregates them."""


def ground_truth_scores(labels_root: str, ground_truth: str) -> tuple[dict[str, float], list[dict[str, float]]]:
    """(metrics of :func:`evaluate_ground_truth`, per-series quality of :func:`series_quality`), from one pass
    over the labels and the ground truth."""
    truth = _read_truth(ground_truth)
    return aggregate([_figures(*_truth_items((rows for _, rows in iter_labels(
        labels_root, GT_COLUMNS, include_unassigned=False)), truth))])


def _truth_items(tables, truth: dict[str, str]) -> tuple[dict, dict]:
    """One item per character instance with a true identity: per window (window identity, truth) and per series
    (series identity, truth, series)."""
    window_items: dict[tuple[str, str], tuple[int, str]] = {}
    series_items: dict[str, tuple[int, str, int]] = {}
    for rows in tables:
        for r in rows.to_pylist():
            label = truth.get(r["instance_id"])
            if label is None:
                continue
            window_items.setdefault((r["window_id"], r["char_key"]), (r["identity"], label))
            series_items.setdefault(r["char_key"], (r["series_identity"], label, r["series_id"]))
    return window_items, series_items


def _figures(window_items: dict, series_items: dict) -> dict[str, object]:
    """Scores per group (each window, each series) and the per-series quality rows: figures that aggregate
    over series by concatenation, so each series can compute its own."""
    from reid.core.eval.metrics import clustering_scores_per_group

    w, s = list(window_items.values()), list(series_items.values())
    return {"window": clustering_scores_per_group([p for p, _ in w], [y for _, y in w], [k[0] for k in window_items])
            if w else {},
            "series": clustering_scores_per_group([p for p, _, _ in s], [y for _, y, _ in s], [g for _, _, g in s])
            if s else {},
            "quality": series_quality(s)}


def aggregate(parts: list[dict]) -> tuple[dict[str, float], list[dict[str, float]]]:
    """The job's ground-truth metrics (means over windows and over series) and per-series quality, from
    :func:`_figures` of disjoint parts of the output."""
    from reid.core.eval.metrics import mean_over_groups

    out: dict[str, float] = {}
    for level in ("window", "series"):
        scores = [p[level] for p in parts if p[level]]
        if scores:
            merged = {name: [v for part in scores for v in part[name]] for name in scores[0]}
            out.update({f"gt_{level}_{name}": mean_over_groups(values) for name, values in merged.items()})
            out[f"gt_{level}_num_groups"] = float(len(merged["ARI"]))
    per_series = sorted((q for p in parts for q in p["quality"]), key=lambda q: q["series"])
    if per_series:
        out.update(identity_counts(per_series))
    return out, per_series


def _figures_path(labels_root: str, series: int) -> str:
    return io.join(labels_root, FIGURES_DIR, f"{series}.json")


def write_series_figures(labels_root: str, ground_truth: str, series: int, shards: list[str],
                         fingerprint: dict | None = None) -> None:
    """One series's figures from its committed final shards, against the ground truth (only its instances
    are kept), stored with the truth's ``fingerprint`` (computed when not given); kept as they are when that
    fingerprint is already there."""
    import json

    path, fingerprint = _figures_path(labels_root, series), fingerprint or io.fingerprint(ground_truth)
    if io.exists(path) and json.loads(io.read_text(path)).get("ground_truth") == fingerprint:
        return
    final = labels_output(labels_root)
    tables = (io.read_parquet(final.data_path(shard), GT_COLUMNS) for shard in sorted(shards))
    figures = _figures(*_truth_items(tables, _read_truth(ground_truth)))
    io.makedirs(io.join(labels_root, FIGURES_DIR))
    io.write_text_atomic(path, json.dumps({"series": series, "ground_truth": fingerprint, **figures}))


def aggregate_series_figures(labels_root: str, ground_truth: str) -> tuple[dict[str, float], list[dict[str, float]]]:
    """:func:`aggregate` of every series's stored figures; a series whose figures are missing or were made
    against another ground truth (an output labelled before) is computed here."""
    import json

    from reid.core.contracts.crops import shards_by_series

    fingerprint = io.fingerprint(ground_truth)  # once, not once per series
    parts = []
    for series, shards in shards_by_series(labels_output(labels_root).committed()).items():
        write_series_figures(labels_root, ground_truth, series, shards, fingerprint)
        parts.append(json.loads(io.read_text(_figures_path(labels_root, series))))
    return aggregate(parts)


def series_quality(items: list[tuple[int, str, int]]) -> list[dict[str, float]]:
    """Per series, from (series identity, true identity, series) items (one per character instance): identities
    found, true identities, B-cubed precision/recall/F1 and AMI. What the report says in words."""
    from sklearn.metrics import adjusted_mutual_info_score

    from reid.core.eval.metrics import bcubed

    out = []
    for series in sorted({g for _, _, g in items}):
        pred = [p for p, _, g in items if g == series]
        true = [y for _, y, g in items if g == series]
        precision, recall, f1 = bcubed(pred, true)
        out.append({"series": int(series), "identities": len(set(pred)), "true_identities": len(set(true)),
                    "instances": len(pred), "bcubed_precision": precision, "bcubed_recall": recall,
                    "bcubed_f1": f1, "AMI": float(adjusted_mutual_info_score(true, pred))})
    return out


def _read_truth(ground_truth: str) -> dict[str, str]:
    with io.open_input(ground_truth) as stream:
        table = pacsv.read_csv(stream, convert_options=pacsv.ConvertOptions(
            include_columns=["instance_id", "identity"], column_types={"identity": pa.string()}))
    # an empty identity is an unnamed extra (the inked corpus's passers-by): not a character to score
    return {i: y for i, y in zip(table["instance_id"].to_pylist(), table["identity"].to_pylist(), strict=True) if y}


def identity_counts(per_series: list[dict[str, float]]) -> dict[str, float]:
    """Predicted vs true identities per series, from :func:`series_quality`'s rows: ``gt_series_identities`` and
    ``gt_series_true_identities`` (means over series) and their ratio (the mean over series of predicted / true:
    1.0 = as many identities as characters)."""
    return {"gt_series_identities": float(np.mean([q["identities"] for q in per_series])),
            "gt_series_true_identities": float(np.mean([q["true_identities"] for q in per_series])),
            "gt_series_identity_ratio": float(np.mean([q["identities"] / q["true_identities"] for q in per_series]))}
