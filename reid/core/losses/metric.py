"""Metric-learning loss of the Re-ID net on batches made of whole sequences (docs/ARCHITECTURE.md, "Method")."""

from __future__ import annotations

import torch
import torch.distributed as dist
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.losses import ContrastiveLoss
from pytorch_metric_learning.miners import PairMarginMiner
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
from torch import nn

from reid.core.losses.distributed import gather_rows, world_size

MINERS = (None, "pair_margin")

PairIndices = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def sequence_identity_labels(char_labels: torch.Tensor, sequence_ids: torch.Tensor) -> torch.Tensor:
    """One int per (sequence, charId): (N,), (N,) -> (N,) labels in 0..K-1."""
    keys = torch.stack([sequence_ids.long(), char_labels.long()], dim=1)
    return torch.unique(keys, dim=0, return_inverse=True)[1]


def restrict_to_labelled_pairs(
    pairs: PairIndices, sequence_ids: torch.Tensor, series_ids: torch.Tensor
) -> PairIndices:
    """Keep the negative pairs whose labels mean something: same sequence, or different series.

    ``pairs`` come from labels made by ``sequence_identity_labels``, so every positive is already within
    one sequence; a "negative" between two sequences of one series is unknown and is dropped.
    """
    a1, p, a2, n = pairs
    known = (sequence_ids[a2] == sequence_ids[n]) | (series_ids[a2] != series_ids[n])
    return a1, p, a2[known], n[known]


def sequence_pair_indices(
    char_labels: torch.Tensor, sequence_ids: torch.Tensor, series_ids: torch.Tensor
) -> PairIndices:
    """All labelled ordered pairs (a1, p, a2, n) of a batch, in pytorch-metric-learning's pair format.

    Positive: same sequence, same charId. Negative: same sequence and different charId, or different
    series. Pairs across sequences of one series are left out (their relation is unknown).
    """
    labels = sequence_identity_labels(char_labels, sequence_ids)
    return restrict_to_labelled_pairs(lmu.get_all_pairs_indices(labels), sequence_ids, series_ids)


class SequencePairLoss(nn.Module):
    """pytorch-metric-learning ``ContrastiveLoss(distance=LpDistance())`` on labelled pairs only.

    Per pair with Euclidean distance d of the normalised embeddings: positives ``relu(d - pos_margin)``,
    negatives ``relu(neg_margin - d)``; each kind is averaged over its non-zero terms, then summed.
    With ``miner="pair_margin"`` a ``PairMarginMiner(miner_pos_margin, miner_neg_margin)`` first keeps
    only positives farther than ``miner_pos_margin`` and negatives closer than ``miner_neg_margin``.

    With ``gather_distributed=True`` and ``torch.distributed`` initialised, every rank gathers the whole
    global batch (embeddings with gradients) and computes the loss on it, as one process would on the
    concatenated batch; sequence ids need only be unique within a rank's batch (they are made unique per
    rank here). DDP then averages identical losses, and since the gather's backward sums every rank's
    gradient into the rows' owner, the averaged parameter gradients are those of the single-process loss.
    Every rank must call the loss the same number of times.

    Shapes: embeddings (N, D); char_labels, sequence_ids, series_ids int (N,) (charIds are compared
    only within a sequence) -> scalar. A batch without labelled pairs gives 0.
    """

    def __init__(
        self,
        pos_margin: float = 0.0,
        neg_margin: float = 1.0,
        miner: str | None = None,
        miner_pos_margin: float = 0.2,
        miner_neg_margin: float = 0.8,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        self.gather_distributed = gather_distributed
        if miner not in MINERS:
            raise ValueError(f"miner={miner!r}: expected one of {MINERS}")
        self.loss = ContrastiveLoss(pos_margin=pos_margin, neg_margin=neg_margin, distance=LpDistance())
        self.miner = (
            PairMarginMiner(pos_margin=miner_pos_margin, neg_margin=miner_neg_margin, distance=LpDistance())
            if miner == "pair_margin"
            else None
        )

    def forward(
        self,
        embeddings: torch.Tensor,
        char_labels: torch.Tensor,
        sequence_ids: torch.Tensor,
        series_ids: torch.Tensor,
    ) -> torch.Tensor:
        device = embeddings.device
        char_labels, sequence_ids, series_ids = (
            t.to(device).long() for t in (char_labels, sequence_ids, series_ids)
        )
        world = world_size() if self.gather_distributed else 1
        if world > 1:
            sequence_ids = sequence_ids * world + dist.get_rank()  # (rank, sequence) -> one id
            (embeddings, ids), _, _ = gather_rows(
                embeddings, torch.stack([char_labels, sequence_ids, series_ids], dim=1)
            )
            char_labels, sequence_ids, series_ids = ids.unbind(dim=1)
        labels = sequence_identity_labels(char_labels, sequence_ids)
        pairs = self.miner(embeddings, labels) if self.miner else lmu.get_all_pairs_indices(labels)
        pairs = restrict_to_labelled_pairs(pairs, sequence_ids, series_ids)
        return self.loss(embeddings, indices_tuple=pairs)
