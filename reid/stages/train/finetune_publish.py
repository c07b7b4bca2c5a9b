"""After fine-tuning, on the driver: the published model calibrated on the validation sequences, evaluated on
validation and test, exported (TorchScript), logged and registered in MLflow, champion decided."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from reid.core import io
from reid.core.embedding import embed_batches
from reid.core.errors import ConfigError
from reid.core.models import ReIDNet
from reid.stages.train.checkpointing import publish_model
from reid.stages.train.device import driver_device
from reid.stages.train.finetune_config import (
    CHAMPION_METRIC,
    FINAL_PREFIX,
    SELECT_METRIC,
    FinetuneConfig,
    evaluate,
)

log = logging.getLogger(__name__)


def calibrate_model(model: ReIDNet, cfg: FinetuneConfig, sequences, device: torch.device | None = None
                    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The assigner's window and series-linking thresholds chosen on labelled ``sequences`` (the validation
    split) with the labeling job's own embedding path and constrained assigner (:mod:`reid.core.calibration`),
    embedded on ``device`` (default: the CPU). Returns (calibration record, the embeddings it was computed on)."""
    from reid.core.calibration import calibrate
    from reid.runtime.ray_datasets import sequence_dataset

    ds = sequence_dataset(cfg.crops, sequences, cfg.face_size, cfg.body_size, False, cfg.data_cpus,
                          transform=model.config.transform)
    values = embed_batches(model, ds.iter_batches(batch_size=8, batch_format="numpy"),
                           device or torch.device("cpu"))
    if len(values["labels"]) < 2:
        raise ConfigError(f"{cfg.sequences}: the validation split has {len(values['labels'])} embedded "
                          "instance(s); at least 2 are needed to calibrate the assigner")
    record = calibrate(values["embeddings"], values["labels"], values["sequences"], values["panels"],
                       values["series"], link_distance=cfg.link_distance, link_constraint=cfg.link_constraint)
    record["source"] = f"validation sequences of fine-tuning run {cfg.name} ({cfg.sequences})"
    return record, values


def finish(cfg: FinetuneConfig, result, val_sequences, test_sequences, tracker, datasets: dict[str, Any]
           ) -> dict[str, Any]:
    """The published checkpoint → thresholds calibrated on validation (stored in the checkpoint), its validation
    and test metrics, TorchScript export; in MLflow (``tracker``: the driver's, ended here) the model logged and
    registered with those metrics linked to it (``datasets``: the validation and test sequences as logged), the
    ``champion`` alias moved to it when it beats the champion on validation MAP@R, the plots. The splits are
    embedded on the training device when the driver has it (:func:`reid.stages.train.device.driver_device`)."""
    from reid.core.models.checkpoint import load_model_checkpoint, save_model_checkpoint
    from reid.core.models.export import export_torchscript

    best = _best_checkpoint(result) if cfg.select == "best" else result.checkpoint
    best_model = publish_model(best.path, cfg.storage, cfg.name)
    out_dir = io.join(cfg.storage, cfg.name, "final")
    model, _, extra = load_model_checkpoint(best_model)
    calibration, val, validation, test = _evaluate_published(model, cfg, val_sequences, test_sequences)
    model.cpu()  # the checkpoint, the export and MLflow's model load anywhere
    save_model_checkpoint(model, best_model, extra={**extra, "calibration": calibration})  # same weights
    exported = io.join(out_dir, "reid_net.torchscript.pt")
    export_torchscript(model, exported)
    registered = _log_published(cfg, tracker, model, best_model, exported, out_dir, calibration, val)
    model_id = registered.get("model_id")  # None: run metrics only (no model logged, or MLflow down)
    tracker.log_metrics(validation, step=cfg.epochs, model_id=model_id, dataset=datasets.get("validation"))
    tracker.log_metrics(test, step=cfg.epochs, model_id=model_id, dataset=datasets.get("test"))
    if registered.get("model_version"):
        from reid.runtime.registry import promote_champion

        registered.update(promote_champion(tracker, cfg.register_as, registered["model_version"],
                                           validation.get(CHAMPION_METRIC, float("nan"))))
    tracker.set_tags({"reid.best_checkpoint": best.path})
    tracker.close()
    log.info("finetune: validation %s, test %s; model %s", validation, test, best_model)
    return {"best_model": best_model, "exported": exported, "test": test, "validation": validation,
            "result": result, "calibration": calibration, **registered}


def _evaluate_published(model: ReIDNet, cfg: FinetuneConfig, val_sequences, test_sequences
                        ) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, float], dict[str, float]]:
    """The published model's calibration, validation embeddings, validation metrics and test metrics (with
    --select last, the last epoch's model; with best, the best's)."""
    from reid.core.eval.metrics import retrieval_metrics
    from reid.runtime.ray_datasets import sequence_dataset

    device = driver_device(cfg.gpu)
    calibration, val = calibrate_model(model, cfg, val_sequences, device)
    log.info("finetune: assigner calibrated on %d validation windows: threshold %.3g, link threshold %.3g "
             "(window AMI %.3f)", calibration["windows"], calibration["threshold"], calibration["link_threshold"],
             calibration["window_AMI"])
    validation = {f"{FINAL_PREFIX}{k}": float(v)
                  for k, v in retrieval_metrics(val["embeddings"], val["labels"], val["sequences"]).items()}
    test_ds = sequence_dataset(cfg.crops, test_sequences, cfg.face_size, cfg.body_size, False, cfg.data_cpus,
                               transform=model.config.transform)
    test = evaluate(model, test_ds.iter_batches(batch_size=8, batch_format="numpy"), device, "test")
    return calibration, val, validation, test


def _log_published(cfg: FinetuneConfig, tracker, model: ReIDNet, best_model: str, exported: str, out_dir: str,
                   calibration: dict[str, Any], val: dict[str, np.ndarray]) -> dict[str, Any]:
    """The calibration's figures and tags, the validation distance histogram, and (local storage) the model,
    the export and the plots as artifacts, the model logged and registered (``cfg.log_model``). Returns the
    registration (empty when nothing was registered)."""
    from reid.core.calibration import distance_histogram_png, pair_distances
    from reid.runtime.registry import log_reid_model

    tracker.log_metrics({f"calibration_{k}": float(v) for k, v in calibration.items()
                         if isinstance(v, int | float)}, step=cfg.epochs)
    tracker.set_tags({"reid.calibration_source": calibration["source"],
                      "reid.calibration_link_rule": calibration.get("link_rule", "")})
    histogram = io.join(out_dir, "val_distances.png")
    positive, negative = pair_distances(val["embeddings"], val["labels"], val["sequences"])
    io.write_bytes_atomic(histogram, distance_histogram_png(
        positive, negative, calibration["threshold"],
        f"validation pairs within a window; calibrated threshold {calibration['threshold']:.3g}"))
    if io.is_uri(best_model):
        return {}
    tracker.log_artifact(best_model, "model")
    tracker.log_artifact(exported, "model")
    tracker.log_artifact(histogram, "plots")
    tracker.log_artifact(_curves(tracker, cfg, out_dir), "plots")
    return log_reid_model(tracker, model, best_model, cfg.register_as) if cfg.log_model else {}


def _curves(tracker, cfg: FinetuneConfig, out_dir: str) -> str:
    """``<out>/curves.png``: the training loss and the validation retrieval metrics per epoch (from the run's
    logged history)."""
    from reid.core.plots import curves_png

    keys = ["loss", "val_precision_at_1", "val_mean_average_precision_at_r"]
    history = tracker.metric_history(keys)
    path = io.join(out_dir, "curves.png")
    io.write_bytes_atomic(path, curves_png(
        {"training loss": {"loss": history.get("loss", [])},
         "validation (within sequence)": {k.removeprefix("val_"): [p for p in history.get(k, []) if p[1] == p[1]]
                                          for k in keys[1:]}}, f"fine-tuning {cfg.name}"))
    return path


def _best_checkpoint(result):
    try:
        best = result.get_best_checkpoint(SELECT_METRIC, "max")
    except (RuntimeError, ValueError, KeyError):
        best = None
    return best or result.checkpoint

