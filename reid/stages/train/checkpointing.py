"""A training run's checkpoints: written, read back on resume, and the final model published.

A training checkpoint directory holds ``state.pt`` (model, optimizer, scheduler, epoch, global step, best
score: everything needed to resume exactly; DINO's ``restart_from_checkpoint``) and ``model.pt`` (the
model alone in :mod:`reid.core.models.checkpoint` format, loadable without Ray).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn

from reid.core import io
from reid.core.errors import CheckpointError
from reid.stages.train.device import unwrap

log = logging.getLogger(__name__)


def save_state(folder: str, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, epoch: int,
               step: int, best: float | None, run_config: dict[str, Any], model_extra: dict[str, Any]) -> None:
    """Write ``state.pt`` and ``model.pt`` into ``folder``."""
    from reid.core.models.checkpoint import save_model_checkpoint

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


def publish_model(checkpoint_path: str, storage: str, name: str) -> str:
    """Copy a checkpoint's ``model.pt`` to the stable ``<storage>/<name>/final/model.pt``; returns that path."""
    target = io.join(storage, name, "final", "model.pt")
    io.write_bytes_atomic(target, io.read_bytes(io.join(checkpoint_path, "model.pt")))
    return target
