"""What the pretrain and fine-tune loops share: device set-up, resumable state, reporting, the trainer.

A training checkpoint directory holds ``state.pt`` (model, optimizer, scheduler, epoch, global step, best
score: everything needed to resume exactly; DINO's ``restart_from_checkpoint``) and ``model.pt`` (the
model alone in :mod:`reid.models.checkpoint` format, loadable without Ray).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from reid import io
from reid.errors import CheckpointError, ConfigError, NonFiniteLossError

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Where this worker runs."""

    rank: int
    world_size: int
    device: torch.device


def runtime() -> Runtime:
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    return Runtime(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device())


def prepare_for_device(model: nn.Module, device: torch.device, channels_last: bool, sync_bn: bool,
                       world_size: int, compile_model: bool, find_unused: bool = False) -> nn.Module:
    """Move to the device, optional SyncBatchNorm / channels_last / torch.compile, wrap in DDP."""
    import ray.train.torch

    if sync_bn and world_size > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": find_unused})
    if compile_model:
        model = torch.compile(model)
    return model


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on GPU; a no-op context on CPU."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def cosine_lambda(total_steps: int, warmup_steps: int = 0) -> Callable[[int], float]:
    """LR factor as a pure function of the global step, so a resumed run follows the same schedule."""
    def fn(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return fn


def check_finite(loss: torch.Tensor, epoch: int, step: int) -> None:
    if not torch.isfinite(loss).all():
        raise NonFiniteLossError(f"loss is {loss.item()} at epoch {epoch}, step {step}: lower the learning rate "
                                 "or check the inputs (not retried)")


def save_state(folder: str, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, epoch: int,
               step: int, best: float | None, run_config: dict[str, Any], model_extra: dict[str, Any]) -> None:
    from reid.models.checkpoint import save_model_checkpoint

    torch.save({"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": epoch, "global_step": step, "best": best,
                "run_config": run_config}, os.path.join(folder, "state.pt"))
    save_model_checkpoint(unwrap(model), os.path.join(folder, "model.pt"), extra=model_extra)


def load_state(checkpoint: Any, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
               run_config: dict[str, Any], architecture_keys: tuple[str, ...]
               ) -> tuple[int, int, float | None, list[str]]:
    """Restore from a Ray checkpoint; refuses one whose architecture differs (nanoGPT).

    When the newest checkpoint cannot be read (truncated by a full disk or a kill while writing), the older
    ones of the same run are tried, newest first, and each skipped one is logged.
    → (next epoch, step, best, paths of the checkpoints skipped)."""
    import ray.train

    skipped: list[str] = []
    for path in _resume_candidates(checkpoint):
        try:
            with ray.train.Checkpoint(path, filesystem=checkpoint.filesystem).as_directory() as folder:
                state = torch.load(os.path.join(folder, "state.pt"), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint: try the next older one
            log.warning("resume: skipped checkpoint %s: unreadable (%s: %s)", path, type(exc).__name__,
                        str(exc)[:200])
            skipped.append(path)
            continue
        previous = state.get("run_config", {})
        changed = [k for k in architecture_keys if previous.get(k) != run_config.get(k)]
        if changed:
            raise CheckpointError(f"cannot resume: the checkpoint was trained with other {changed} "
                                  f"({[previous.get(k) for k in changed]} vs "
                                  f"{[run_config.get(k) for k in changed]}); use a new --name")
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if skipped:
            log.warning("resume: resumed from %s (epoch %d), the newest readable checkpoint", path, state["epoch"])
        return state["epoch"] + 1, state["global_step"], state["best"], skipped
    raise CheckpointError(f"cannot resume: no readable checkpoint in {os.path.dirname(checkpoint.path)} "
                          f"(skipped {skipped}); use a new --name")


def _resume_candidates(checkpoint: Any) -> list[str]:
    """The checkpoint Ray Train hands back, then the older ``checkpoint_*`` folders beside it, newest first
    (Ray names them by time)."""
    import pyarrow.fs as pafs

    parent, newest = os.path.split(checkpoint.path.rstrip("/"))
    infos = checkpoint.filesystem.get_file_info(pafs.FileSelector(parent))
    older = sorted((i.base_name for i in infos if i.type == pafs.FileType.Directory
                    and i.base_name.startswith("checkpoint_") and i.base_name < newest), reverse=True)
    return [checkpoint.path] + [f"{parent}/{name}" for name in older]


def end_epoch(metrics: dict[str, float], rank: int, tracker: Any, *, model: nn.Module,
              optimizer: torch.optim.Optimizer, scheduler: Any, epoch: int, step: int, run_config: dict[str, Any],
              stage: str, name: str, best: float | None = None) -> None:
    """The end of an epoch in every training loop: rank 0 logs the metrics to MLflow (its tracker; None on other
    ranks), then every rank reports them to Ray Train once; only rank 0 attaches the checkpoint (Ray Train keeps one checkpoint per report, from rank 0).

    ``best`` is the selection score so far (fine-tuning keeps the best validation MAP@R; pretraining has none)."""
    import ray.train

    if tracker:
        tracker.log_metrics(metrics, step=epoch)
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as folder:
        save_state(folder, model=model, optimizer=optimizer, scheduler=scheduler, epoch=epoch, step=step, best=best,
                   run_config=run_config, model_extra={"stage": stage, "epoch": epoch, "name": name})
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of known GPUs (FLOP/s), for MFU."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in (("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L4", 121e12), ("A10", 125e12)):
        if key in name:
            return tflops
    return None


def train_flops_per_sample(model: nn.Module, inputs: tuple[torch.Tensor, ...], samples: int) -> float:
    """Training FLOPs per sample: the forward FLOPs of ``inputs`` (counted by torch's FlopCounterMode) × 3
    (forward + backward ≈ 3 forwards), divided by the ``samples`` those inputs hold.

    A pretraining sample is one character instance, i.e. all of its views (two strong and one weak view of its
    face and of its body): pass the whole batch's views and the number of instances, not the number of images.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    was_training = model.training
    model.eval()
    with torch.no_grad(), counter:
        model(*inputs)
    model.train(was_training)
    if samples <= 0:
        raise ValueError(f"samples must be positive, got {samples}")
    return 3.0 * counter.get_total_flops() / samples


def trainer_run_config(name: str, storage_path: str, max_failures: int):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    from reid.train.failures import StopOnNonRetryable

    return RunConfig(name=name, storage_path=os.path.abspath(storage_path) if not io.is_uri(storage_path)
                     else storage_path,
                     failure_config=FailureConfig(max_failures=max_failures),  # lost workers and nodes only:
                     callbacks=[StopOnNonRetryable()],  # our own errors (ReidError) are never retried
                     checkpoint_config=CheckpointConfig(num_to_keep=2))


def scaling_config(workers: int, gpu: bool, cpus_per_worker: float):
    from ray.train import ScalingConfig

    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    resources = {"CPU": cpus_per_worker}
    if gpu:
        resources["GPU"] = 1
    return ScalingConfig(num_workers=workers, use_gpu=gpu, resources_per_worker=resources)


def run_dir(storage: str, name: str) -> str:
    """``<storage>/<name>``, absolute for a local path: every worker, on any node, must see the same folder."""
    return io.join(storage if io.is_uri(storage) else os.path.abspath(storage), name)


def spool_dir(storage: str, name: str) -> str | None:
    """Where a run's unlogged MLflow operations are saved: ``<storage>/<name>`` (absolute; on a cluster the
    shared storage, next to the checkpoints) rather than a worker's Ray session dir. None for URI storage."""
    return None if io.is_uri(storage) else io.join(os.path.abspath(storage), name)


def open_run(cfg: Any, stage: str, parent_run_id: str | None):
    """The driver's tracker of a training run (``cfg``: a pretrain or fine-tune config). Its MLflow run is the
    one recorded in ``<storage>/<name>/_job.json`` (a re-run with the same name and storage resumes the training
    and continues its run), else a new one, recorded there. Opened before the workers start, so that they log
    into it (:func:`worker_tracker`)."""
    from reid.tracking import Tracker

    return Tracker(cfg.mlflow_uri, cfg.name, cfg.experiment, tags={"reid.stage": stage},
                   parent_run_id=parent_run_id, spool_dir=spool_dir(cfg.storage, cfg.name),
                   job_folder=run_dir(cfg.storage, cfg.name))


def worker_tracker(cfg: Any, loop_config: dict[str, Any], stage: str):
    """Rank 0's tracker: the driver's run (its id is in the loop config; if MLflow was down as the driver
    started, the run recorded in the run folder, or a new one recorded there), logging the host's system
    metrics every ``cfg.system_metrics_s`` seconds (0: none)."""
    from reid.tracking import Tracker

    tracker = Tracker(cfg.mlflow_uri, cfg.name, cfg.experiment, tags={"reid.stage": stage},
                      parent_run_id=loop_config.get("parent_run_id"), spool_dir=loop_config.get("spool_dir"),
                      mark_resumed=False, run_id=loop_config.get("run_id"),
                      job_folder=loop_config["marker_dir"])
    if cfg.system_metrics_s > 0:
        tracker.monitor_system(cfg.system_metrics_s)
    return tracker


def fit_tracked(trainer: Any, tracker: Any, stage: str, storage: str, name: str):
    """``reid.train.failures.fit`` of ``trainer``; a run that fails or is interrupted ends its MLflow run as
    FAILED or KILLED before the error goes on."""
    from reid.train.failures import fit

    try:
        return fit(trainer, run_dir(storage, name), stage)
    except BaseException as exc:
        tracker.close(status="KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise


SYSTEM_METRICS_HELP = ("seconds between MLflow system metrics samples (CPU, memory, GPU use of rank 0's "
                       "host); 0 = none")


def publish_model(checkpoint_path: str, storage: str, name: str) -> str:
    """Copy a checkpoint's ``model.pt`` to the stable ``<storage>/<name>/final/model.pt``; returns that path."""
    target = io.join(storage, name, "final", "model.pt")
    io.write_bytes_atomic(target, io.read_bytes(io.join(checkpoint_path, "model.pt")))
    return target


def data_config(datasets_to_split: list[str] | str = "all"):
    """Ray Train's DataConfig with explicit execution options (the default one triggers a Ray deprecation)."""
    import ray
    from ray.data import ExecutionOptions
    from ray.train import DataConfig

    current = ray.data.DataContext.get_current().execution_options
    options = ExecutionOptions(resource_limits=current.resource_limits, preserve_order=current.preserve_order,
                               verbose_progress=current.verbose_progress)
    return DataConfig(datasets_to_split=datasets_to_split, execution_options=options)
