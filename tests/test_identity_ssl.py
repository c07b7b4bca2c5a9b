"""Identity-aware SSL objective against a float64 numpy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from reid.core.losses.identity_ssl import IdentityAwareSSLLoss


def reference_simclr(z_a: np.ndarray, z_b: np.ndarray, temperature: float) -> float:
    """Matrix form in float64 numpy: mean over 2M anchors of -log softmax at the other view."""
    m = len(z_a)
    if m == 0:
        return 0.0
    z = np.concatenate([z_a, z_b]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    logits = z @ z.T / temperature
    np.fill_diagonal(logits, -np.inf)
    positives = np.concatenate([np.arange(m, 2 * m), np.arange(m)])
    log_prob = logits[np.arange(2 * m), positives] - logsumexp(logits, axis=1)
    return float(-log_prob.mean())


def _views(gen: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, 16, generator=gen, dtype=torch.float64), torch.randn(
        n, 16, generator=gen, dtype=torch.float64
    )


@pytest.mark.parametrize(
    "n_face, n_body, n_pair, temperature", [(5, 4, 3, 0.07), (8, 2, 2, 0.5), (3, 6, 1, 0.2)]
)
def test_total_and_terms_match_reference(n_face: int, n_body: int, n_pair: int, temperature: float) -> None:
    gen = torch.Generator().manual_seed(n_face + 10 * n_body)
    face_a, face_b = _views(gen, n_face)
    body_a, body_b = _views(gen, n_body)
    face_weak, body_weak = _views(gen, n_pair)
    weights = {"face_weight": 1.0, "body_weight": 0.5, "identity_weight": 2.0}
    total, terms = IdentityAwareSSLLoss(temperature, **weights)(
        face_a, face_b, body_a, body_b, face_weak, body_weak
    )
    want = {
        "face": reference_simclr(face_a.numpy(), face_b.numpy(), temperature),
        "body": reference_simclr(body_a.numpy(), body_b.numpy(), temperature),
        "identity": reference_simclr(face_weak.numpy(), body_weak.numpy(), temperature),
    }
    for name in want:
        assert terms[name].item() == pytest.approx(want[name], rel=1e-10)
    assert total.item() == pytest.approx(
        want["face"] + 0.5 * want["body"] + 2.0 * want["identity"], rel=1e-10
    )


def test_unpaired_instances_contribute_only_their_simclr_term() -> None:
    gen = torch.Generator().manual_seed(3)
    face_a, face_b = _views(gen, 6)
    body_a, body_b = _views(gen, 5)
    face_weak, body_weak = _views(gen, 2)  # only 2 instances have both a face and a body
    face_a.requires_grad_(True)
    face_weak.requires_grad_(True)
    criterion = IdentityAwareSSLLoss(0.1, identity_weight=0.0)
    total, terms = criterion(face_a, face_b, body_a, body_b, face_weak, body_weak)
    total.backward()
    # With the identity term off, the weak views get no gradient and the total is the two SimCLR terms.
    assert torch.count_nonzero(face_weak.grad) == 0
    assert total.item() == pytest.approx(
        reference_simclr(face_a.detach().numpy(), face_b.numpy(), 0.1)
        + reference_simclr(body_a.numpy(), body_b.numpy(), 0.1),
        rel=1e-10,
    )
    assert terms["identity"].item() == pytest.approx(
        reference_simclr(face_weak.detach().numpy(), body_weak.numpy(), 0.1), rel=1e-10
    )


def test_empty_terms_are_zero_not_nan() -> None:
    gen = torch.Generator().manual_seed(4)
    face_a, face_b = _views(gen, 4)
    face_a.requires_grad_(True)
    empty = torch.zeros(0, 16, dtype=torch.float64)
    total, terms = IdentityAwareSSLLoss(0.07)(face_a, face_b, empty, empty, empty, empty)
    total.backward()
    assert terms["body"].item() == 0.0 and terms["identity"].item() == 0.0
    assert total.item() == pytest.approx(
        reference_simclr(face_a.detach().numpy(), face_b.numpy(), 0.07), rel=1e-10
    )
    assert torch.isfinite(face_a.grad).all()


def test_rejects_negative_weight() -> None:
    with pytest.raises(ValueError, match="identity_weight"):
        IdentityAwareSSLLoss(identity_weight=-1.0)
