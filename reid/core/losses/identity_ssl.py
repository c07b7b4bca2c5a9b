"""The identity-aware SSL objective: SimCLR on faces, SimCLR on bodies, and face <-> body of one instance."""

from __future__ import annotations

import torch
from torch import nn

from reid.core.losses.ntxent import NTXentLoss


class IdentityAwareSSLLoss(nn.Module):
    """``face_weight * NT-Xent(face views) + body_weight * NT-Xent(body views)
    + identity_weight * NT-Xent(weak face, weak body of the same instance)``.

    The SimCLR terms take every face (resp. body) in the batch; the identity term takes only the
    instances that have both a face and a body, so an instance without a pair contributes only its
    own SimCLR term. A term with no rows is 0 (not NaN). All three share one temperature and, with
    ``gather_distributed``, gather negatives across DDP ranks (see ``NTXentLoss``).

    Shapes: face_a, face_b (Nf, D) two strong views of each face; body_a, body_b (Nb, D) two strong
    views of each body; face_weak, body_weak (Np, D) one weak view each of the Np paired instances.
    Returns (total scalar, {"face": ..., "body": ..., "identity": ...}), the terms unweighted and
    still attached to the graph (call ``.item()`` to log them).
    """

    def __init__(
        self,
        temperature: float = 0.07,
        face_weight: float = 1.0,
        body_weight: float = 1.0,
        identity_weight: float = 1.0,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        for name, weight in (("face", face_weight), ("body", body_weight), ("identity", identity_weight)):
            if weight < 0:
                raise ValueError(f"{name}_weight must be >= 0, got {weight}")
        self.weights = {"face": face_weight, "body": body_weight, "identity": identity_weight}
        self.ntxent = NTXentLoss(temperature, gather_distributed)

    def forward(
        self,
        face_a: torch.Tensor,
        face_b: torch.Tensor,
        body_a: torch.Tensor,
        body_b: torch.Tensor,
        face_weak: torch.Tensor,
        body_weak: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        terms = {
            "face": self.ntxent(face_a, face_b),
            "body": self.ntxent(body_a, body_b),
            "identity": self.ntxent(face_weak, body_weak),
        }
        w = self.weights
        total = w["face"] * terms["face"] + w["body"] * terms["body"] + w["identity"] * terms["identity"]
        return total, terms
