"""The SSL network: projection head structure, normalisation, and that it can learn."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reid.core.losses.ntxent import NTXentLoss
from reid.core.models.backbone import ModelConfig
from reid.core.models.ssl import SSLNet

TINY = ModelConfig(arch="resnet18", face_size=32, body_size=48, proj_hidden_dim=64, proj_dim=16, embed_dim=8)


def _batch_norm(x: torch.Tensor, bn: torch.nn.BatchNorm1d) -> torch.Tensor:
    y = (x - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps)
    return y * bn.weight + bn.bias if bn.affine else y


def _randomise_bn_stats(net: torch.nn.Module) -> None:
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)


def test_features_and_projection_follow_design_formula() -> None:
    """features = ReLU(BN(W2 ReLU(BN(W1 h)))), projection = normalize(BN(W3 features)), in eval mode."""
    torch.manual_seed(0)
    net = SSLNet(TINY)
    with torch.no_grad():
        _randomise_bn_stats(net)
        net.eval()
        images = torch.randn(3, 3, 32, 32)
        h = net.backbone(images)
        lin1, bn1, _, lin2, bn2, _ = net.trunk
        want_features = F.relu(_batch_norm(F.relu(_batch_norm(h @ lin1.weight.T, bn1)) @ lin2.weight.T, bn2))
        lin3, bn3 = net.out
        want_projection = F.normalize(_batch_norm(want_features @ lin3.weight.T, bn3), dim=1)
        torch.testing.assert_close(net.features(images), want_features)
        torch.testing.assert_close(net(images), want_projection)
    assert net.features(images).shape == (3, 64)
    assert net(images).shape == (3, TINY.proj_dim)


def test_projection_is_unit_norm_for_faces_and_bodies_of_different_sizes() -> None:
    torch.manual_seed(1)
    net = SSLNet(TINY)
    for size in (TINY.face_size, TINY.body_size):
        z = net(torch.randn(4, 3, size, size))
        torch.testing.assert_close(z.norm(dim=1), torch.ones(4))


def test_hidden_width_defaults_to_backbone_width() -> None:
    net = SSLNet(ModelConfig(arch="resnet18", proj_dim=16))
    assert net.trunk[0].in_features == net.trunk[0].out_features == 512
    assert net.eval().features(torch.randn(2, 3, 32, 32)).shape == (2, 512)


def test_a_few_steps_reduce_the_ntxent_loss() -> None:
    torch.manual_seed(2)
    net = SSLNet(TINY)
    criterion = NTXentLoss(temperature=0.2)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    images = torch.rand(6, 3, 32, 32)
    view_a, view_b = images + 0.05 * torch.randn_like(images), images.flip(3)
    losses = []
    for _ in range(4):
        loss = criterion(net(view_a), net(view_b))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
