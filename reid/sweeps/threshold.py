"""Calibrate the assigner: the distance threshold and linkage that best cluster the validation windows.

Embeddings of the validation split are computed once (Ray Data reads the crops; one model on the driver),
then a grid of threshold × linkage is scored with the labeling job's own assigner
(:func:`reid.assign.assign_window`) against the charIds, within each window (labels are relative to a
sequence, docs/DATA.md). No Tune: the grid costs seconds. Among grid points tied on the objective, the middle
of the widest run of tied thresholds is chosen (the farthest from where the score drops).

Outputs under ``<storage>/<name>/``: ``best.yaml`` (``model``, ``threshold``, ``linkage``, ``metric``:
``jobs/label.py --config best.yaml`` takes it unchanged), ``summary.csv``/``summary.md`` (every grid
point) and ``distances.png`` (positive/negative pair distance histograms with the chosen threshold).
MLflow: a parent run, and a child run per linkage with the scores at each threshold (step = grid index).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reid import config, io
from reid.assign import LINKAGES, METRICS
from reid.calibration import (
    OBJECTIVES,
    SCORES,
    choose_threshold,
    distance_histogram_png,
    grid_scores,
    pair_distances,
)
from reid.sweeps.summary import markdown_table, write_summary

log = logging.getLogger(__name__)
__all__ = ["OBJECTIVES", "SCORES", "ThresholdSweepConfig", "choose_threshold", "distance_histogram_png",
           "grid_scores", "pair_distances", "run_threshold_sweep"]


@dataclass(frozen=True)
class ThresholdSweepConfig:
    """Grid search of the assigner's threshold and linkage on the validation windows of a Re-ID model."""

    model: str = field(default="runs/train/finetune/final/model.pt",
                       metadata={"help": "Re-ID checkpoint (model.pt of jobs/finetune.py)"})
    crops: str = field(default="runs/demo/crops", metadata={"help": "output folder of jobs/crop.py"})
    sequences: str = field(default="runs/demo/corpus/data/comics_seq",
                           metadata={"help": "folder of <split>_sequences.json"})
    split: str = field(default="validation", metadata={"help": "labelled split to calibrate on"})
    storage: str = "runs/train"
    name: str = field(default="threshold-sweep", metadata={"help": "sweep name: output folder and MLflow run key"})
    threshold_min: float = 0.1
    threshold_max: float = 1.9
    threshold_steps: int = field(default=37, metadata={"help": "grid points from min to max (inclusive)"})
    linkages: tuple[str, ...] = field(default=LINKAGES, metadata={"help": "comma-separated linkages to try"})
    metric: str = field(default="euclidean", metadata={"help": "assigner distance (not searched)"})
    objective: str = field(default="AMI", metadata={"help": "score to maximise: AMI, ARI or bcubed_f1"})
    batch_size: int = field(default=8, metadata={"help": "sequences per embedding batch"})
    data_cpus: float = 0.5
    gpu: bool = False
    ray_address: str | None = None
    ray_num_cpus: int | None = None
    mlflow_uri: str | None = None
    experiment: str = "comic-reid"

    def __post_init__(self) -> None:
        config.check(0 < self.threshold_min <= self.threshold_max,
                     f"need 0 < threshold_min <= threshold_max, got {self.threshold_min}, {self.threshold_max}")
        config.check(self.threshold_steps >= 1, f"threshold_steps must be >= 1, got {self.threshold_steps}")
        config.check(len(self.linkages) >= 1 and set(self.linkages) <= set(LINKAGES),
                     f"linkages must be among {LINKAGES}, got {self.linkages}")
        config.check(self.metric in METRICS, f"metric must be one of {METRICS}, got {self.metric}")
        config.check(self.objective in OBJECTIVES, f"objective must be one of {OBJECTIVES}, got {self.objective}")
        config.check(self.batch_size >= 1, "batch_size must be >= 1")

    def thresholds(self) -> np.ndarray:
        return np.linspace(self.threshold_min, self.threshold_max, self.threshold_steps)


def embed_split(cfg: ThresholdSweepConfig) -> dict[str, np.ndarray]:
    """Embeddings, labels (unique per window and charId) and window ids of the split's instances."""
    import torch

    from reid.contracts.crops import known_instance_ids
    from reid.data import formats
    from reid.datasets import sequence_dataset
    from reid.embedding import embed_batches
    from reid.models.checkpoint import load_model_checkpoint
    from reid.raycluster import init_ray

    model, model_config, _ = load_model_checkpoint(cfg.model, expected_kind="reid")
    sequences, bad = formats.read_split_checked(cfg.sequences, cfg.split, formats.RowPolicy(),
                                                known_instance_ids(cfg.crops))  # on the driver, before Ray
    for row in bad:
        log.warning("sweep: sequence left out: %s, %s: %s", row.source, row.where, row.reason)
    init_ray(cfg.ray_address, cfg.ray_num_cpus)
    device = torch.device("cuda" if cfg.gpu and torch.cuda.is_available() else "cpu")
    dataset = sequence_dataset(cfg.crops, sequences, model_config.face_size, model_config.body_size, False,
                               cfg.data_cpus, transform=model_config.transform)
    return embed_batches(model.to(device), dataset.iter_batches(batch_size=cfg.batch_size, batch_format="numpy"),
                         device)


def label_config_values(cfg: ThresholdSweepConfig, best: dict[str, Any]) -> dict[str, Any]:
    """The chosen assigner settings as ``jobs/label.py`` config keys (the label job validates the file when
    ``--config best.yaml`` loads it; the sweep does not import the label stage)."""
    return {"model": cfg.model, "threshold": float(best["threshold"]), "linkage": best["linkage"],
            "metric": cfg.metric}


def run_threshold_sweep(cfg: ThresholdSweepConfig) -> dict[str, Any]:
    """Embed the split once, score the grid, write best.yaml, the summary and the histogram; track in MLflow.

    Returns {"best": row, "best_config": path, "histogram": path, "summary": {...}, "rows": [...],
    "parent_run_id": id}.
    """
    import yaml

    from reid.errors import DataFormatError

    values = embed_split(cfg)
    embeddings, labels, windows = values["embeddings"], values["labels"], values["sequences"]
    if len(labels) < 2:
        raise DataFormatError(cfg.sequences, f"split {cfg.split} has {len(labels)} embedded instance(s); "
                                             "need at least 2")
    rows = grid_scores(embeddings, labels, windows, cfg.thresholds(), cfg.linkages, cfg.metric)
    best = choose_threshold(rows, cfg.objective)
    folder = io.join(cfg.storage, cfg.name)
    best_config = io.join(folder, "best.yaml")
    io.write_text_atomic(best_config, yaml.safe_dump(label_config_values(cfg, best), sort_keys=False))
    positive, negative = pair_distances(embeddings, labels, windows, cfg.metric)
    histogram = io.join(folder, "distances.png")
    io.write_bytes_atomic(histogram, distance_histogram_png(
        positive, negative, best["threshold"],
        f"{cfg.split}: {cfg.objective} {best[cfg.objective]:.3f} at {best['linkage']} {best['threshold']:.3g}"))
    summary = write_summary(rows, folder, f"threshold sweep {cfg.name}: {cfg.objective} per linkage and threshold "
                                          f"({len(np.unique(windows))} {cfg.split} windows, {len(labels)} instances)")
    parent_run_id = _track(cfg, rows, best, [best_config, histogram, summary["csv"], summary["md"]])
    per_linkage = [choose_threshold([r for r in rows if r["linkage"] == k], cfg.objective) for k in cfg.linkages]
    return {"best": best, "best_config": best_config, "histogram": histogram, "summary": summary, "rows": rows,
            "best_per_linkage": markdown_table(per_linkage), "parent_run_id": parent_run_id,
            "pairs": (len(positive), len(negative))}


def _track(cfg: ThresholdSweepConfig, rows: list[dict[str, Any]], best: dict[str, Any],
           artifacts: list[str]) -> str | None:
    from reid.tracking import Tracker

    folder = io.join(cfg.storage, cfg.name)
    spool = None if io.is_uri(folder) else folder
    parent = Tracker(cfg.mlflow_uri, cfg.name, cfg.experiment, tags={"reid.stage": "sweep_threshold"},
                     spool_dir=spool)
    parent.log_params(config.to_dict(cfg))
    for linkage in cfg.linkages:
        child = Tracker(cfg.mlflow_uri, f"{cfg.name}-{linkage}", cfg.experiment, parent_run_id=parent.run_id,
                        tags={"reid.stage": "sweep_threshold"}, spool_dir=spool)
        child.log_params({"linkage": linkage, "metric": cfg.metric})
        for step, row in enumerate(r for r in rows if r["linkage"] == linkage):
            child.log_metrics({k: row[k] for k in ("threshold", *SCORES, "clusters")}, step=step)
        child.close()
    parent.log_metrics({"best_threshold": best["threshold"], **{f"best_{k}": best[k] for k in SCORES}}, step=0)
    parent.set_tags({"reid.best_linkage": best["linkage"], "reid.model": cfg.model})
    for path in artifacts:
        if not io.is_uri(path):
            parent.log_artifact(path, "sweep")
    parent.close()
    return parent.run_id
