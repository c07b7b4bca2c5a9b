"""NT-Xent (SimCLR's normalised-temperature cross-entropy), optionally over the global DDP batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reid.core.losses.distributed import gather_rows, world_size


def _at_least_float32(z: torch.Tensor) -> torch.Tensor:
    return z if z.dtype in (torch.float32, torch.float64) else z.float()


class NTXentLoss(nn.Module):
    """2N-way NT-Xent between two aligned batches of views.

    For the 2M embeddings ``z = [z_a; z_b]`` (L2-normalised here) of a batch of M pairs, with
    ``s_ij = z_i . z_j / temperature`` and ``p(i)`` the other view of ``i``::

        loss = 1/(2M) * sum_i -log( exp(s_i,p(i)) / sum_{k != i} exp(s_ik) )

    The same function serves the cross-modal term (``z_a`` = faces, ``z_b`` = bodies of one instance).

    With ``gather_distributed=True`` and ``torch.distributed`` initialised, each rank all-gathers every
    rank's pairs with gradients, so its anchors (its own rows) see the global batch of negatives. Each
    rank returns ``world_size / (2M) * sum over its own anchors``: the mean over ranks of these values is
    the single-process loss on the concatenated batch, and since DDP averages gradients over ranks, the
    parameter gradients equal that loss's gradients (also when local batch sizes differ). Every rank
    must call the loss the same number of times, even with an empty local batch.

    Shapes: z_a (N, D), z_b (N, D) -> scalar. An empty global batch gives 0 (still differentiable).

    Example::

        loss = NTXentLoss(temperature=0.07)(model(view_1), model(view_2))
    """

    def __init__(self, temperature: float = 0.07, gather_distributed: bool = False) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature
        self.gather_distributed = gather_distributed

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        if z_a.shape != z_b.shape or z_a.dim() != 2:
            raise ValueError(
                f"z_a and z_b must both be (N, D); got {tuple(z_a.shape)} and {tuple(z_b.shape)}"
            )
        # Logits in float32 even under autocast: with temperature 0.07 they reach +-14, where bf16
        # keeps about 0.06 of resolution; an (N, 2M) matmul in float32 costs nothing next to the model.
        with torch.autocast(device_type=z_a.device.type, enabled=False):
            return self._loss(
                F.normalize(_at_least_float32(z_a), dim=1), F.normalize(_at_least_float32(z_b), dim=1)
            )

    def _loss(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        world = world_size() if self.gather_distributed else 1
        if world > 1:
            # one collective for both views: gather (N, 2D) rows, then split
            (pairs,), offset, total = gather_rows(torch.cat([z_a, z_b], dim=1))
            all_a, all_b = pairs[:, : z_a.shape[1]], pairs[:, z_a.shape[1] :]
        else:
            all_a, all_b, offset, total = z_a, z_b, 0, z_a.shape[0]
        if total == 0:
            return (z_a.sum() + z_b.sum()) * 0.0
        local = z_a.shape[0]
        own = torch.arange(local, device=z_a.device) + offset  # this rank's rows in the gathered batch
        is_self = own[:, None] == torch.arange(total, device=z_a.device)[None, :]
        candidates = torch.cat([all_a, all_b]).t()  # (D, 2M)
        logits_a = (z_a @ candidates) / self.temperature  # anchors from view a: (n, 2M)
        logits_b = (z_b @ candidates) / self.temperature
        no_self = torch.zeros_like(is_self)
        logits_a = logits_a.masked_fill(torch.cat([is_self, no_self], dim=1), float("-inf"))
        logits_b = logits_b.masked_fill(torch.cat([no_self, is_self], dim=1), float("-inf"))
        loss_sum = F.cross_entropy(logits_a, own + total, reduction="sum") + F.cross_entropy(
            logits_b, own, reduction="sum"
        )
        return loss_sum * (world / (2 * total))
