"""Training cost in FLOPs and the GPUs' peak, for the model FLOPs utilisation (MFU) a pretraining epoch reports."""

from __future__ import annotations

import torch
from torch import nn


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
