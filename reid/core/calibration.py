"""Choosing the assigner's thresholds from labelled windows (Ray-free; used by fine-tuning and the sweep).

The window threshold is scored the way the labeling job clusters: :func:`reid.core.assign.assign_window` per
labelled window (sequence), constrained by panels when they are known, against the window's charIds; among
grid points tied on the objective, the middle of the widest run of tied thresholds wins (the farthest from where
the score drops).

The series-linking threshold is scored the way the series pass links: every labelled sequence is cut into two
half-windows, each clustered at the chosen window threshold, and all half-window clusters of one series are
linked with :func:`reid.core.assign.link_windows`. charIds are relative to one sequence, so the result is scored on the
pairs inside one sequence only (pairwise F1); since those pairs cannot see links across sequences, the loosest
threshold within one standard error of the best F1 wins (the one-standard-error rule; the error is a bootstrap
over validation sequences, so that few validation sequences allow more slack than many).

The link threshold is never below the window threshold. Linking clusters the centroids of window identities;
one character's centroids are closer to each other than its single crops are (averaging removes per-crop
noise), so a distance that already counts as "same character" for two crops in a window is not too loose for
two centroids, and a tighter link only keeps one character's windows apart. Nor is it above the loosest window
threshold within one standard error of the best window score: the distance of two centroids is at most the
mean distance of their crops, so where clustering crops starts to join two characters, linking their centroids
does too; on a few validation sequences the labelled pairs alone allow thresholds that link everything the
cannot-link constraint does not forbid, which would collapse a large cast. docs/RESULTS.md has the
measurements behind both bounds.
"""

from __future__ import annotations

import io as _io
import math
from typing import Any

import numpy as np

from reid.core.assign import assign_window, link_windows
from reid.core.eval.metrics import clustering_scores_per_group, mean_over_groups

OBJECTIVES = ("AMI", "ARI", "bcubed_f1")
SCORES = ("AMI", "ARI", "bcubed_f1", "bcubed_precision", "bcubed_recall")
DEFAULT_GRID = tuple(round(0.1 + 0.05 * i, 3) for i in range(37))  # 0.10 .. 1.90
PAPER_THRESHOLD = 0.82


def group_rows(groups: np.ndarray) -> list[np.ndarray]:
    """Row indices of every group (sorted group ids)."""
    groups = np.asarray(groups)
    return [np.flatnonzero(groups == g) for g in np.unique(groups)]


def grid_scores(embeddings: np.ndarray, labels: np.ndarray, groups: np.ndarray, thresholds: Any,
                linkages: tuple[str, ...], metric: str = "euclidean", panels: Any | None = None
                ) -> list[dict[str, Any]]:
    """Clustering scores of the assigner at every (linkage, threshold), within groups (windows).

    embeddings (N, D); labels (N,) true identities; groups (N,) window of each row; panels (N,) or None (no
    cannot-link). Returns one row per grid point: linkage, threshold, ARI, AMI, B-cubed precision/recall/F1
    (means over windows), clusters (predicted identities, summed over windows).
    """
    windows = group_rows(groups)
    panels = None if panels is None else np.asarray(panels, dtype=object)
    rows = []
    for linkage in linkages:
        for threshold in thresholds:
            pred = np.zeros(len(labels), dtype=np.int64)
            clusters = 0
            for idx in windows:
                pred[idx] = assign_window(embeddings[idx], float(threshold), metric, linkage,
                                          panels=None if panels is None else panels[idx])
                clusters += int(pred[idx].max()) + 1
            per_window = clustering_scores_per_group(pred, labels, groups)
            rows.append({"linkage": linkage, "threshold": round(float(threshold), 6),
                         **{k: mean_over_groups(per_window[k]) for k in SCORES},
                         **{f"{k}_se": _standard_error(per_window[k]) for k in SCORES}, "clusters": clusters})
    return rows


def _standard_error(values: list[float]) -> float:
    """Standard error of a mean over windows (NaN scores of one-identity windows left out)."""
    v = np.asarray(values, float)
    v = v[~np.isnan(v)]
    return float(np.std(v, ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0


def loosest_window_threshold(rows: list[dict[str, Any]], objective: str = "AMI") -> float:
    """The largest window threshold whose score is within one standard error (over windows) of the best one's:
    beyond it, clustering the crops of a window starts to join different characters."""
    best = max(rows, key=lambda r: r[objective])
    floor = best[objective] - best.get(f"{objective}_se", 0.0)
    return float(max(r["threshold"] for r in rows if r["linkage"] == best["linkage"] and r[objective] >= floor - 1e-12))


def choose_threshold(rows: list[dict[str, Any]], objective: str = "AMI", prefer: str = "middle") -> dict[str, Any]:
    """The grid row with the best ``objective``; among ties, the middle of the widest run of consecutive
    thresholds (one linkage) at that score (``prefer="middle"``: the farthest from where the score drops), or its
    largest threshold (``prefer="largest"``). Earlier linkages win ties of equal width."""
    finite = [r for r in rows if math.isfinite(r[objective])]
    if not finite:
        raise ValueError(f"no grid point has a finite {objective}")
    best = max(r[objective] for r in finite)
    runs: list[list[dict[str, Any]]] = []
    for linkage in dict.fromkeys(r["linkage"] for r in rows):
        current: list[dict[str, Any]] = []
        for row in sorted((r for r in rows if r["linkage"] == linkage), key=lambda r: r["threshold"]):
            if math.isfinite(row[objective]) and math.isclose(row[objective], best, rel_tol=1e-9, abs_tol=1e-12):
                current.append(row)
            elif current:
                runs.append(current)
                current = []
        if current:
            runs.append(current)
    widest = max(runs, key=len)
    return widest[-1] if prefer == "largest" else widest[(len(widest) - 1) // 2]


def pair_counts(pred: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """(true positive, false positive, false negative) pair counts per group (sequence), (G, 3) int: two rows of
    one group are a positive pair when their labels agree, else a negative one; pairs across groups are
    unknown."""
    counts = []
    for idx in group_rows(groups):
        same_label = labels[idx][:, None] == labels[idx][None, :]
        same_pred = pred[idx][:, None] == pred[idx][None, :]
        upper = np.triu(np.ones((len(idx), len(idx)), bool), k=1)
        counts.append(((same_label & same_pred & upper).sum(), (~same_label & same_pred & upper).sum(),
                       (same_label & ~same_pred & upper).sum()))
    return np.asarray(counts, np.int64).reshape(-1, 3)


def _pair_f1(tp: Any, fp: Any, fn: Any) -> Any:
    """(precision, recall, F1) of pair counts; arrays of counts give arrays."""
    precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 1.0)
    recall = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 1.0)
    return precision, recall, np.where(precision + recall > 0, 2 * precision * recall /
                                       np.maximum(precision + recall, 1e-12), 0.0)


def pair_scores(counts: np.ndarray) -> dict[str, float]:
    """Pairwise precision/recall/F1 pooled over the groups of :func:`pair_counts`."""
    precision, recall, f1 = _pair_f1(*counts.sum(axis=0))
    return {"pair_precision": float(precision), "pair_recall": float(recall), "pair_f1": float(f1)}


def bootstrap_se(counts: np.ndarray, resamples: int = 500, seed: int = 0) -> float:
    """Standard error of the pooled pair F1 when the groups (sequences) are resampled with replacement."""
    if len(counts) < 2:
        return 0.0
    draws = np.random.default_rng(seed).integers(0, len(counts), size=(resamples, len(counts)))
    totals = counts[draws].sum(axis=1)  # (resamples, 3)
    return float(np.std(_pair_f1(totals[:, 0], totals[:, 1], totals[:, 2])[2], ddof=1))


def loosest_within_one_se(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The one-standard-error rule on the link grid: the largest threshold whose pair F1 is within one bootstrap
    standard error of the best one's. The labelled pairs see only a few links (those inside one sequence) and
    none across sequences, so scores a standard error apart do not tell thresholds apart, and the one that
    links most is taken among them."""
    best = max(rows, key=lambda r: (r["pair_f1"], -r["threshold"]))
    floor = best["pair_f1"] - bootstrap_se(best["counts"])
    chosen = max((r for r in rows if r["pair_f1"] >= floor - 1e-12), key=lambda r: r["threshold"])
    return {**chosen, "pair_f1_best": best["pair_f1"], "pair_f1_floor": floor}


def link_grid_scores(embeddings: np.ndarray, labels: np.ndarray, groups: np.ndarray, panels: Any,
                     series: Any, window_threshold: float, thresholds: Any, linkage: str = "average",
                     metric: str = "euclidean", link_distance: str = "centroid", link_constraint: str = "hard"
                     ) -> list[dict[str, Any]]:
    """Scores of series linking at each threshold, on the labelled windows of each series pooled together.

    Each labelled window (group) is cut into a first and a second half (two half-windows, each clustered at
    ``window_threshold`` with cannot-link by panel); then all half-window clusters of one series are linked at
    every threshold, exactly as the label job's series pass links window clusters (cannot-link by panel), and
    the result is scored on the pairs whose relation is known: pairs inside one labelled window
    (:func:`pair_counts`, :func:`pair_scores`; ``pair_f1`` is the objective). Groups with one panel are skipped.
    """
    points = np.asarray(embeddings, np.float64)
    panels, series = np.asarray(panels, dtype=object), np.asarray(series)
    half_ids, half_labels, members, rows_used = [], [], [], []
    for g, idx in enumerate(group_rows(groups)):
        ordered = sorted(set(panels[idx]))
        if len(ordered) < 2:
            continue
        first = set(ordered[: len(ordered) // 2])
        for half in (0, 1):
            part = np.asarray([i for i in idx if (panels[i] in first) == (half == 0)])
            window_labels = assign_window(points[part], window_threshold, metric, linkage, panels=panels[part])
            for i, lab in zip(part, window_labels, strict=True):
                rows_used.append(i)
                half_ids.append(f"{g}/{half}")
                half_labels.append(int(lab))
                members.append({f"{g}/{panels[i]}": str(i)})  # panel ids are only unique within a window
    if not rows_used:
        return []
    used = np.asarray(rows_used)
    out = []
    for threshold in thresholds:
        linked = link_windows(points[used], np.asarray(half_labels), np.asarray(half_ids), series[used],
                              float(threshold), metric, linkage, members=members, distance=link_distance,
                              constraint=link_constraint)
        counts = pair_counts(linked, np.asarray(labels)[used], np.asarray(groups)[used])
        out.append({"linkage": linkage, "threshold": round(float(threshold), 6), **pair_scores(counts),
                    "counts": counts, "clusters": int(len(np.unique(linked)))})
    return out


def pair_distances(embeddings: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                   metric: str = "euclidean") -> tuple[np.ndarray, np.ndarray]:
    """Distances of all pairs inside one window, split into (same identity, different identity).

    Rows are L2-normalised first, as the assigner does; ``metric`` is euclidean or cosine (1 - cos).
    """
    points = np.asarray(embeddings, dtype=np.float64)
    points = points / np.maximum(np.linalg.norm(points, axis=1, keepdims=True), 1e-12)
    labels = np.asarray(labels)
    positive, negative = [], []
    for idx in group_rows(np.asarray(groups)):
        cosine = np.clip(points[idx] @ points[idx].T, -1.0, 1.0)
        dist = np.sqrt(np.maximum(2.0 - 2.0 * cosine, 0.0)) if metric == "euclidean" else 1.0 - cosine
        upper = np.triu_indices(len(idx), k=1)
        same = labels[idx][:, None] == labels[idx][None, :]
        positive.append(dist[upper][same[upper]])
        negative.append(dist[upper][~same[upper]])
    empty = np.zeros(0)
    return (np.concatenate(positive) if positive else empty), (np.concatenate(negative) if negative else empty)


def distance_histogram_png(positive: np.ndarray, negative: np.ndarray, threshold: float, title: str) -> bytes:
    """PNG of the positive/negative pair distance histograms with the chosen threshold as a vertical line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    high = 1.1 * max(threshold, float(positive.max(initial=0)), float(negative.max(initial=0)))
    bins = np.linspace(0.0, high, 41)
    ax.hist(negative, bins=bins, alpha=0.6, color="tab:red", density=True,
            label=f"different identity ({len(negative)} pairs)")
    ax.hist(positive, bins=bins, alpha=0.6, color="tab:blue", density=True,
            label=f"same identity ({len(positive)} pairs)")
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3g}")
    ax.set_xlabel("distance between unit-norm embeddings (within a window)")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    out = _io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()


def link_threshold_rule(pairs_threshold: float, window_threshold: float,
                        window_ceiling: float = math.inf) -> tuple[float, str]:
    """The series-linking threshold from the one the labelled pairs chose, kept between the window threshold
    and the loosest window threshold within one standard error of the best (module docstring). Returns
    (threshold, which rule decided)."""
    if pairs_threshold < window_threshold:
        return window_threshold, "window threshold (floor)"
    if pairs_threshold > window_ceiling:
        return window_ceiling, "loosest window threshold within one standard error (ceiling)"
    return pairs_threshold, "labelled pairs, loosest within one standard error of the best"


def calibrate(embeddings: np.ndarray, labels: np.ndarray, groups: np.ndarray, panels: Any, series: Any = None,
              linkage: str = "average", metric: str = "euclidean", objective: str = "AMI",
              thresholds: Any = DEFAULT_GRID, link_distance: str = "centroid", link_constraint: str = "hard"
              ) -> dict[str, Any]:
    """Window and linking thresholds for labelled windows: {"threshold", "link_threshold", "linkage", "metric",
    "objective", "window_<score>", "link_<score>", "windows", "instances"} (plain floats and strings).

    ``series`` (N,): the series of each row (linking pools a series' labelled windows); None = each window is a
    series of its own."""
    return calibration_grid(embeddings, labels, groups, panels, series, linkage, metric, objective, thresholds,
                            link_distance, link_constraint)[0]


def calibration_grid(embeddings: np.ndarray, labels: np.ndarray, groups: np.ndarray, panels: Any,
                     series: Any = None, linkage: str = "average", metric: str = "euclidean",
                     objective: str = "AMI", thresholds: Any = DEFAULT_GRID, link_distance: str = "centroid",
                     link_constraint: str = "hard") -> tuple[dict[str, Any], list[dict], list[dict]]:
    """:func:`calibrate`'s record with the grids it was chosen on: (record, window rows, link rows)."""
    window_rows = grid_scores(embeddings, labels, groups, thresholds, (linkage,), metric, panels)
    window = choose_threshold(window_rows, objective)
    series = np.asarray(groups) if series is None else np.asarray(series)
    link_rows = link_grid_scores(embeddings, labels, groups, panels, series, window["threshold"], thresholds,
                                 linkage, metric, link_distance, link_constraint)
    # The labelled pairs say nothing about linking across sequences (their relation is unknown), so thresholds
    # within the noise of the best tie on them: take the loosest of those, the most linking the labelled pairs
    # allow (the middle of a tie, or the loosest exact tie, split a cast into far more identities than it has;
    # docs/RESULTS.md).
    link = loosest_within_one_se(link_rows) if link_rows else {"threshold": window["threshold"]}
    ceiling = loosest_window_threshold(window_rows, objective)
    link_threshold, link_rule = link_threshold_rule(float(link["threshold"]), float(window["threshold"]), ceiling)
    result: dict[str, Any] = {"threshold": float(window["threshold"]), "link_threshold": link_threshold,
                              "link_rule": link_rule, "link_pairs_threshold": float(link["threshold"]),
                              "link_ceiling": ceiling,
                              "linkage": linkage, "metric": metric, "objective": objective,
                              "link_objective": "pair_f1", "link_distance": link_distance,
                              "link_constraint": link_constraint, "windows": len(np.unique(groups)),
                              "instances": len(labels)}
    result.update({f"window_{k}": float(window[k]) for k in SCORES})
    result.update({f"link_{k}": float(link[k]) for k in ("pair_precision", "pair_recall", "pair_f1", "pair_f1_best",
                                                          "pair_f1_floor") if k in link})
    return result, window_rows, link_rows
