"""The assigner's calibration as a sweep: window threshold × linkage, and the series-linking threshold, chosen
on the validation windows of a Re-ID model.

It is the calibration fine-tuning runs and stores in the checkpoint (:func:`reid.core.calibration.calibration_grid`,
the label job's constrained assigner with cannot-link by panel, both thresholds), run for each linkage of
``--linkages``; the linkage with the best window objective wins. For the same model, split and grid (and the
default ``average`` linkage) ``best.yaml`` holds exactly what fine-tuning stored. Embeddings of the split are
computed once (Ray Data reads the crops; one model on the driver); the grid costs seconds, so no Tune.

Outputs under ``<storage>/<name>/``: ``best.yaml`` (``model``, ``threshold``, ``link_threshold``, ``linkage``,
``metric``, ``link_distance``, ``link_constraint``, ``thresholds_from``: ``jobs/label.py --config best.yaml``
takes it unchanged and records the sweep as the source of its thresholds), ``summary.csv``/``summary.md``
(every window grid point) and ``distances.png`` (positive/negative pair distance histograms with the chosen
threshold). MLflow: a parent run, and a child run per linkage with the scores at each threshold (step = grid
index).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reid.core import config, io
from reid.core.assign import LINKAGES, METRICS
from reid.core.calibration import (
    OBJECTIVES,
    SCORES,
    calibration_grid,
    choose_threshold,
    distance_histogram_png,
    grid_scores,
    pair_distances,
)
from reid.core.linking import DEFAULT_LINKING, LINK_CONSTRAINTS, LINK_DISTANCES
from reid.stages.sweeps.summary import markdown_table, write_summary

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
    link_distance: str | None = field(default=None, metadata={
        "help": "distance between window identities when linking (default: the model's calibrated choice, "
                "else centroid)"})
    link_constraint: str | None = field(default=None, metadata={
        "help": "cannot-link when linking: hard | soft (default: the model's calibrated choice, else hard)"})
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
        config.check(self.link_distance in (None, *LINK_DISTANCES),
                     f"link_distance must be one of {LINK_DISTANCES}, got {self.link_distance!r}")
        config.check(self.link_constraint in (None, *LINK_CONSTRAINTS),
                     f"link_constraint must be one of {LINK_CONSTRAINTS}, got {self.link_constraint!r}")

    def thresholds(self) -> np.ndarray:
        """The grid (rounded as fine-tuning's calibration grid is, so that the default grids are the same)."""
        return np.round(np.linspace(self.threshold_min, self.threshold_max, self.threshold_steps), 6)


def embed_split(cfg: ThresholdSweepConfig) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Embeddings, labels (unique per window and charId), window, panel and series ids of the split's
    instances, and the checkpoint's extra record (its stored calibration)."""
    import torch

    from reid.core.contracts.crops import known_instance_ids
    from reid.core.data import formats
    from reid.core.embedding import embed_batches
    from reid.core.models.checkpoint import load_model_checkpoint
    from reid.runtime.ray_datasets import sequence_dataset
    from reid.runtime.raycluster import init_ray

    model, model_config, extra = load_model_checkpoint(cfg.model, expected_kind="reid")
    sequences, bad = formats.read_split_checked(cfg.sequences, cfg.split, formats.RowPolicy(),
                                                known_instance_ids(cfg.crops))  # on the driver, before Ray
    for row in bad:
        log.warning("sweep: sequence left out: %s, %s: %s", row.source, row.where, row.reason)
    init_ray(cfg.ray_address, cfg.ray_num_cpus)
    device = torch.device("cuda" if cfg.gpu and torch.cuda.is_available() else "cpu")
    dataset = sequence_dataset(cfg.crops, sequences, model_config.face_size, model_config.body_size, False,
                               cfg.data_cpus, transform=model_config.transform)
    values = embed_batches(model.to(device), dataset.iter_batches(batch_size=cfg.batch_size, batch_format="numpy"),
                           device)
    return values, extra or {}


def linking_choice(cfg: ThresholdSweepConfig, extra: dict[str, Any]) -> dict[str, str]:
    """The link distance and constraint: the flags, else the model's calibrated choice, else centroid / hard."""
    stored = extra.get("calibration") or {}
    return {name: getattr(cfg, name) or str(stored.get(name, default)) for name, default in DEFAULT_LINKING.items()}


def label_config_values(cfg: ThresholdSweepConfig, best: dict[str, Any]) -> dict[str, Any]:
    """The chosen assigner settings as ``jobs/label.py`` config keys (the label job validates the file when
    ``--config best.yaml`` loads it; the sweep does not import the label stage)."""
    return {"model": cfg.model, "threshold": float(best["threshold"]), "link_threshold": float(best["link_threshold"]),
            "linkage": best["linkage"], "metric": cfg.metric, "link_distance": best["link_distance"],
            "link_constraint": best["link_constraint"],
            "thresholds_from": f"threshold sweep {cfg.name} ({cfg.split} split of {cfg.sequences})"}


def run_threshold_sweep(cfg: ThresholdSweepConfig) -> dict[str, Any]:
    """Embed the split once, calibrate for each linkage, write best.yaml, the summary and the histogram; track
    in MLflow.

    Returns {"best": calibration record of the chosen linkage, "best_config": path, "histogram": path,
    "summary": {...}, "rows": window grid rows, "calibrations": {linkage: record}, "parent_run_id": id}.
    """
    import yaml

    from reid.core.errors import DataFormatError

    values, extra = embed_split(cfg)
    embeddings, labels, windows = values["embeddings"], values["labels"], values["sequences"]
    if len(labels) < 2:
        raise DataFormatError(cfg.sequences, f"split {cfg.split} has {len(labels)} embedded instance(s); "
                                             "need at least 2")
    linking = linking_choice(cfg, extra)
    calibrations, rows = {}, []
    for linkage in cfg.linkages:
        record, window_rows, _ = calibration_grid(embeddings, labels, windows, values["panels"], values["series"],
                                                  linkage, cfg.metric, cfg.objective, cfg.thresholds(), **linking)
        calibrations[linkage] = record
        rows.extend(window_rows)
    # the best window objective; ties keep the order of --linkages (average first by default)
    best = max(calibrations.values(), key=lambda r: r[f"window_{cfg.objective}"])
    folder = io.join(cfg.storage, cfg.name)
    best_config = io.join(folder, "best.yaml")
    io.write_text_atomic(best_config, yaml.safe_dump(label_config_values(cfg, best), sort_keys=False))
    positive, negative = pair_distances(embeddings, labels, windows, cfg.metric)
    histogram = io.join(folder, "distances.png")
    io.write_bytes_atomic(histogram, distance_histogram_png(
        positive, negative, best["threshold"],
        f"{cfg.split}: {cfg.objective} {best[f'window_{cfg.objective}']:.3f} at {best['linkage']} "
        f"{best['threshold']:.3g}, link {best['link_threshold']:.3g}"))
    summary = write_summary(rows, folder, f"threshold sweep {cfg.name}: window {cfg.objective} per linkage and "
                                          f"threshold ({len(np.unique(windows))} {cfg.split} windows, "
                                          f"{len(labels)} instances, cannot-link by panel)")
    parent_run_id = _track(cfg, rows, best, [best_config, histogram, summary["csv"], summary["md"]])
    per_linkage = [{"linkage": k, "threshold": r["threshold"], "link_threshold": r["link_threshold"],
                    **{s: r[f"window_{s}"] for s in SCORES}} for k, r in calibrations.items()]
    return {"best": best, "best_config": best_config, "histogram": histogram, "summary": summary, "rows": rows,
            "calibrations": calibrations, "best_per_linkage": markdown_table(per_linkage),
            "parent_run_id": parent_run_id, "pairs": (len(positive), len(negative))}


def _track(cfg: ThresholdSweepConfig, rows: list[dict[str, Any]], best: dict[str, Any],
           artifacts: list[str]) -> str | None:
    from reid.runtime.tracking import Tracker

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
    parent.log_metrics({"best_threshold": best["threshold"], "best_link_threshold": best["link_threshold"],
                        **{f"best_{k}": best[f"window_{k}"] for k in SCORES}}, step=0)
    parent.set_tags({"reid.best_linkage": best["linkage"], "reid.model": cfg.model,
                     "reid.link_distance": best["link_distance"], "reid.link_constraint": best["link_constraint"]})
    for path in artifacts:
        if not io.is_uri(path):
            parent.log_artifact(path, "sweep")
    parent.close()
    return parent.run_id
