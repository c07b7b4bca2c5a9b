"""The Re-ID network: SSL features of face and body, fused by sum, then Linear (docs/ARCHITECTURE.md, "Models")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reid.core.errors import ConfigError, DataFormatError
from reid.core.models.backbone import ModelConfig
from reid.core.models.ssl import SSLNet


def _static_graph() -> bool:
    """True while tracing or exporting: no data-dependent shapes or checks are allowed then."""
    return torch.jit.is_tracing() or torch.compiler.is_exporting()


class ReIDNet(nn.Module):
    """Face/body embedding for re-identification.

    ``forward(face, body, face_mask, body_mask) -> (N, embed_dim)``, L2-normalised. A modality whose mask
    is False contributes exactly zero: its image is never run through the network (so it does not even
    reach batch-norm statistics), and its content does not matter. With ``config.freeze_ssl`` the SSL part
    (backbone + projection trunk) has no gradients and stays in eval mode; only the last Linear trains.
    With ``config.flip_average``, eval mode embeds every crop and its mirror image in one pass and returns the
    normalised mean of the two embeddings (training mode is unchanged).
    """

    def __init__(self, config: ModelConfig, ssl_net: SSLNet | None = None) -> None:
        super().__init__()
        if ssl_net is None:
            ssl_net = SSLNet(config)
        else:
            mismatch = [
                m for m in ssl_net.config.architecture_mismatch(config) if not m.startswith("embed_dim")
            ]
            if mismatch:
                raise ConfigError(f"the SSL network does not match the Re-ID config: {mismatch}")
        self.config = config
        self.backbone = ssl_net.backbone
        self.trunk = ssl_net.trunk
        self.embed = nn.Linear(config.feature_dim, config.embed_dim)
        if config.freeze_ssl:
            for p in [*self.backbone.parameters(), *self.trunk.parameters()]:
                p.requires_grad_(False)
            self.train(self.training)

    def train(self, mode: bool = True) -> ReIDNet:
        """As ``nn.Module.train``, but a frozen SSL part stays in eval mode (fixed BN statistics)."""
        super().train(mode)
        if self.config.freeze_ssl:
            self.backbone.eval()
            self.trunk.eval()
        return self

    def modality_features(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """L2-normalised SSL features of the rows where ``mask`` is True, exact zeros elsewhere.

        images (N, 3, H, W), mask bool (N,) -> (N, feature_dim).
        """
        if _static_graph():
            # Fixed shapes for export; in eval mode every row is independent, so this equals the branch below.
            feats = F.normalize(self.trunk(self.backbone(images)), dim=1)
            return torch.where(mask[:, None], feats, torch.zeros_like(feats))
        rows = mask.nonzero().squeeze(1)
        if rows.numel() == 0:
            return images.new_zeros((mask.shape[0], self.config.feature_dim))
        feats = F.normalize(self.trunk(self.backbone(images.index_select(0, rows))), dim=1)
        return feats.new_zeros((mask.shape[0], feats.shape[1])).index_copy(0, rows, feats)

    def forward(
        self, face: torch.Tensor, body: torch.Tensor, face_mask: torch.Tensor, body_mask: torch.Tensor
    ) -> torch.Tensor:
        """face (N, 3, Hf, Wf), body (N, 3, Hb, Wb), masks bool (N,) -> (N, embed_dim), L2-normalised.

        Raises DataFormatError when the shapes disagree or a row has neither a face nor a body.
        """
        if not _static_graph():
            _check_inputs(face, body, face_mask, body_mask)
        if self.config.flip_average and not self.training:
            n = face.shape[0]
            both = self._embed(torch.cat([face, face.flip(3)]), torch.cat([body, body.flip(3)]),
                               torch.cat([face_mask, face_mask]), torch.cat([body_mask, body_mask]))
            return F.normalize(both[:n] + both[n:], dim=1)
        return self._embed(face, body, face_mask, body_mask)

    def _embed(self, face: torch.Tensor, body: torch.Tensor, face_mask: torch.Tensor, body_mask: torch.Tensor
               ) -> torch.Tensor:
        fused = self.modality_features(face, face_mask) + self.modality_features(body, body_mask)
        return F.normalize(self.embed(fused), dim=1)


def _check_inputs(
    face: torch.Tensor, body: torch.Tensor, face_mask: torch.Tensor, body_mask: torch.Tensor
) -> None:
    n = face_mask.shape[0] if face_mask.dim() == 1 else -1
    for name, mask in (("face_mask", face_mask), ("body_mask", body_mask)):
        if mask.dtype != torch.bool or mask.dim() != 1 or mask.shape[0] != n:
            raise DataFormatError(
                "ReIDNet.forward",
                f"{name} must be a bool tensor of shape (N,); got {mask.dtype} {tuple(mask.shape)}",
            )
    for name, images in (("face", face), ("body", body)):
        if images.dim() != 4 or images.shape[0] != n:
            raise DataFormatError(
                "ReIDNet.forward", f"{name} must be (N={n}, 3, H, W); got {tuple(images.shape)}"
            )
    empty = (~(face_mask | body_mask)).nonzero().squeeze(1)
    if empty.numel():
        raise DataFormatError(
            "ReIDNet.forward",
            "no face and no body (every row needs at least one)",
            where=f"rows {empty.tolist()[:20]}",
        )
