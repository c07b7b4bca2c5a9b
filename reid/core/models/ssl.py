"""The self-supervised network: shared backbone + projection MLP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reid.core.models.backbone import ModelConfig, build_backbone


class SSLNet(nn.Module):
    """Backbone + projection head: ``Linear-BN-ReLU-Linear-BN-ReLU`` (trunk) + ``Linear-BN`` (out).

    Faces and bodies of any size go through the same network.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone, width = build_backbone(config.arch, config.backbone_weights)
        hidden = config.feature_dim
        self.trunk = nn.Sequential(
            nn.Linear(width, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
        )
        # The last BN has no affine part (SimCLR v2): the L2 normalisation follows it.
        self.out = nn.Sequential(
            nn.Linear(hidden, config.proj_dim, bias=False),
            nn.BatchNorm1d(config.proj_dim, affine=False),
        )

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Re-ID feature, after the head's second ReLU: (N, 3, H, W) -> (N, feature_dim), not normalised."""
        return self.trunk(self.backbone(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Projection for the contrastive loss: (N, 3, H, W) -> (N, proj_dim), L2-normalised."""
        return F.normalize(self.out(self.features(images)), dim=1)
