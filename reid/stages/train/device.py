"""Where a training worker runs and how its model is put there; which device the driver uses after training."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Runtime:
    """Where this worker runs."""

    rank: int
    world_size: int
    device: torch.device


def runtime() -> Runtime:
    """This Ray Train worker's rank, world size and device."""
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
    """The model inside torch.compile's and DDP's wrappers."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def driver_device(gpu: bool) -> torch.device:
    """The driver's device for the work after training (re-embedding the validation and test splits): a GPU
    when the run trained on GPUs (``--gpu``) and the driver has one, else the CPU."""
    return torch.device("cuda") if gpu and torch.cuda.is_available() else torch.device("cpu")
