"""A training run's MLflow run: opened by the driver, continued by rank 0, ended when the run fails."""

from __future__ import annotations

from typing import Any

from reid.stages.train.ray_config import run_dir, spool_dir

SYSTEM_METRICS_HELP = ("seconds between MLflow system metrics samples (CPU, memory, GPU use of rank 0's "
                       "host); 0 = none")


def open_run(cfg: Any, stage: str, parent_run_id: str | None):
    """The driver's tracker of a training run (``cfg``: a pretrain or fine-tune config). Its MLflow run is the
    one recorded in ``<storage>/<name>/_job.json`` (a re-run with the same name and storage resumes the training
    and continues its run), else a new one, recorded there. Opened before the workers start, so that they log
    into it (:func:`worker_tracker`)."""
    from reid.runtime.tracking import Tracker

    return Tracker(cfg.mlflow_uri, cfg.name, cfg.experiment, tags={"reid.stage": stage},
                   parent_run_id=parent_run_id, spool_dir=spool_dir(cfg.storage, cfg.name),
                   job_folder=run_dir(cfg.storage, cfg.name))


def worker_tracker(cfg: Any, loop_config: dict[str, Any], stage: str):
    """Rank 0's tracker: the driver's run (its id is in the loop config; if MLflow was down as the driver
    started, the run recorded in the run folder, or a new one recorded there), logging the host's system
    metrics every ``cfg.system_metrics_s`` seconds (0: none)."""
    from reid.runtime.tracking import Tracker

    tracker = Tracker(cfg.mlflow_uri, cfg.name, cfg.experiment, tags={"reid.stage": stage},
                      parent_run_id=loop_config.get("parent_run_id"), spool_dir=loop_config.get("spool_dir"),
                      mark_resumed=False, run_id=loop_config.get("run_id"),
                      job_folder=loop_config["marker_dir"])
    if cfg.system_metrics_s > 0:
        tracker.monitor_system(cfg.system_metrics_s)
    return tracker


def fit_tracked(trainer: Any, tracker: Any, stage: str, storage: str, name: str):
    """``reid.stages.train.failures.fit`` of ``trainer``; a run that fails or is interrupted ends its MLflow run as
    FAILED or KILLED before the error goes on."""
    from reid.stages.train.failures import fit

    try:
        return fit(trainer, run_dir(storage, name), stage)
    except BaseException as exc:
        tracker.close(status="KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
