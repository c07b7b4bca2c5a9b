"""Gathering a loss's rows from every DDP rank, so that a loss sees the global batch."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn


def world_size() -> int:
    """World size when a process group is up, else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def gather_rows(*tensors: torch.Tensor) -> tuple[list[torch.Tensor], int, int]:
    """All-gather the rows of each tensor (all (N, ...) with the same local N) from every rank, in rank order;
    N may differ per rank. One exchange of the sizes serves every tensor.

    Floating tensors keep their gradient: the backward pass sums every rank's gradient of a gathered
    row into the rank that owns it. Every rank must call this the same number of times, also with N = 0.

    Returns ([rows (M, ...) per tensor], offset of this rank's rows in them, M).
    """
    world, rank = dist.get_world_size(), dist.get_rank()
    local = tensors[0].shape[0]
    size = torch.tensor([local], device=tensors[0].device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    total, offset = sum(counts), sum(counts[:rank])
    if total == 0:
        return list(tensors), 0, 0
    gathered = []
    for x in tensors:
        # all_gather needs equal shapes: pad to the largest local batch, then drop the padding.
        padded = torch.cat([x, x.new_zeros((max(counts) - local, *x.shape[1:]))])
        if x.is_floating_point():
            parts = dist_nn.all_gather(padded)
        else:
            parts = [torch.empty_like(padded) for _ in range(world)]
            dist.all_gather(parts, padded)
        gathered.append(torch.cat([part[:count] for part, count in zip(parts, counts, strict=True)]))
    return gathered, offset, total
