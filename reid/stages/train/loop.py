"""The shape of every training loop (Ray Train's examples, DINO's ``main_dino.py``)::

    run = start_run(...)                      # seed, model, resume, device, tracker, progress
    for epoch in range(run.start_epoch, cfg.epochs):
        metrics = train_one_epoch(run, ...)   # the stage's own
        metrics.update(validate(run, ...))    # the stage's own
        end_epoch(run, metrics, epoch)        # MLflow, checkpoint, one Ray Train report
    run.close()

The training math never imports Ray: the stage's step and validation see a :class:`Run`'s model, optimizer and
device.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from reid.core.errors import NonFiniteLossError
from reid.stages.train.checkpointing import load_state, save_state
from reid.stages.train.device import Runtime, runtime
from reid.stages.train.progress import Progress
from reid.stages.train.tracked import worker_tracker

Parts = tuple[nn.Module, torch.optim.Optimizer, Any]
"""What a stage trains: the bare model (checkpointed, resumed, validated), its optimizer and LR scheduler."""


@dataclass
class Run:
    """One worker's training run: what it trains, where it is (``start_epoch``, global ``step``, ``best``
    selection score so far), and where it reports (rank 0's ``tracker``, None on other ranks; ``progress``)."""

    rt: Runtime
    stage: str
    name: str
    folder: str  # the run's folder on the shared storage (progress, fault markers)
    run_config: dict[str, Any]  # the stage's config as a dict: stored in every checkpoint
    model: nn.Module
    net: nn.Module  # ``model`` on the device, wrapped for DDP (and torch.compile): what trains
    optimizer: torch.optim.Optimizer
    scheduler: Any
    progress: Progress
    tracker: Any = None
    start_epoch: int = 0
    step: int = 0
    best: float | None = None
    resumed: bool = False

    def close(self) -> None:
        if self.tracker:
            self.tracker.close()


def start_run(cfg: Any, loop_config: dict[str, Any], stage: str, build: Callable[[], Parts],
              prepare: Callable[[nn.Module, Runtime], nn.Module], architecture_keys: tuple[str, ...],
              params: dict[str, Any], steps_per_epoch: int) -> Run:
    """The prologue of a Ray Train worker function, in the order that makes runs reproducible and resumable:
    seed (``cfg.seed`` + rank) before ``build`` draws the initial weights; restore Ray Train's checkpoint, if any,
    into the bare model (a checkpoint of another architecture is refused) before ``prepare`` puts it on the
    device; then rank 0's tracker (``params`` logged, a resume tagged) and the progress file."""
    import ray.train

    rt = runtime()
    torch.manual_seed(cfg.seed + rt.rank)
    model, optimizer, scheduler = build()
    start_epoch, step, best, skipped = 0, 0, None, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        start_epoch, step, best, skipped = load_state(checkpoint, model, optimizer, scheduler, loop_config["cfg"],
                                                      architecture_keys)
    net = prepare(model, rt)
    tracker = None
    if rt.rank == 0:
        tracker = worker_tracker(cfg, loop_config, stage)
        tracker.log_params(params)
        if checkpoint:
            tracker.set_tags({"reid.resumed_at_epoch": start_epoch,
                              **({"reid.resume_skipped": ", ".join(skipped)} if skipped else {})})
    folder = loop_config["marker_dir"]
    progress = Progress(folder if rt.rank == 0 else None, cfg.epochs, steps_per_epoch)
    progress.forward_warnings()
    for path in skipped:
        progress.note(f"resume: skipped the unreadable checkpoint {path}")
    if checkpoint:
        progress.note(f"resumed from a checkpoint: continuing at epoch {start_epoch}")
    return Run(rt, stage, cfg.name, folder, loop_config["cfg"], model, net, optimizer, scheduler, progress, tracker,
               start_epoch, step, best, resumed=bool(checkpoint))


def check_finite(loss: torch.Tensor, epoch: int, step: int) -> None:
    """Refuse a non-finite loss (:class:`NonFiniteLossError`, never retried)."""
    if not torch.isfinite(loss).all():
        raise NonFiniteLossError(f"loss is {loss.item()} at epoch {epoch}, step {step}: lower the learning rate "
                                 "or check the inputs (not retried)")


def end_epoch(run: Run, metrics: dict[str, float], epoch: int) -> None:
    """The end of an epoch in every training loop: rank 0 logs the metrics to MLflow, then every rank reports
    them to Ray Train once; only rank 0 attaches the checkpoint (Ray Train keeps one checkpoint per report, from
    rank 0). ``metrics`` holds the epoch's ``loss`` and ``samples_per_s``, which the progress bar shows."""
    import ray.train

    if run.tracker:
        run.tracker.log_metrics(metrics, step=epoch)
    if run.rt.rank != 0:
        ray.train.report(metrics, checkpoint=None)
    else:
        with tempfile.TemporaryDirectory() as folder:
            save_state(folder, model=run.model, optimizer=run.optimizer, scheduler=run.scheduler, epoch=epoch,
                       step=run.step, best=run.best, run_config=run.run_config,
                       model_extra={"stage": run.stage, "epoch": epoch, "name": run.name})
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
    run.progress.update(epoch + 1, 0, metrics["loss"], metrics["samples_per_s"], force=True)
