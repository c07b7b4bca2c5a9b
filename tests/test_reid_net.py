"""The Re-ID net: fusion formula, exact masking, freezing, and building from an SSL checkpoint."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from reid.core.errors import ConfigError, DataFormatError
from reid.core.models.backbone import ModelConfig
from reid.core.models.checkpoint import reid_net_from_ssl_checkpoint, save_model_checkpoint
from reid.core.models.reid_net import ReIDNet
from reid.core.models.ssl import SSLNet

TINY = ModelConfig(arch="resnet18", face_size=32, body_size=48, proj_hidden_dim=64, proj_dim=16, embed_dim=8)
FACE_MASK = torch.tensor([True, False, True, True, False])
BODY_MASK = torch.tensor([True, True, False, True, True])


def _inputs(n: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=gen), torch.randn(n, 3, 48, 48, generator=gen)


def _reference_row(ssl: SSLNet, net: ReIDNet, face, body, has_face: bool, has_body: bool) -> torch.Tensor:
    """One row on its own: normalize(W (sum of normalised present features) + b)."""
    fused = torch.zeros(TINY.feature_dim)
    if has_face:
        fused += F.normalize(ssl.features(face[None]), dim=1)[0]
    if has_body:
        fused += F.normalize(ssl.features(body[None]), dim=1)[0]
    return F.normalize(net.embed.weight @ fused + net.embed.bias, dim=0)


def test_output_matches_per_row_fusion_formula() -> None:
    torch.manual_seed(0)
    ssl = SSLNet(TINY).eval()
    net = ReIDNet(TINY, ssl).eval()
    face, body = _inputs()
    with torch.no_grad():
        out = net(face, body, FACE_MASK, BODY_MASK)
        want = torch.stack(
            [
                _reference_row(ssl, net, face[i], body[i], bool(FACE_MASK[i]), bool(BODY_MASK[i]))
                for i in range(5)
            ]
        )
    assert out.shape == (5, TINY.embed_dim)
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(5))


@pytest.mark.parametrize("freeze_ssl, train", [(True, True), (False, True), (True, False)])
def test_missing_modality_content_changes_nothing(freeze_ssl: bool, train: bool) -> None:
    """Masking is exact: what is in a missing face/body slot never reaches the output or BN statistics."""
    torch.manual_seed(1)
    config = dataclasses.replace(TINY, freeze_ssl=freeze_ssl)
    net_a = ReIDNet(config).train(train)
    net_b = ReIDNet(config).train(train)
    net_b.load_state_dict(net_a.state_dict())
    face, body = _inputs()
    face_noise, body_noise = face.clone(), body.clone()
    face_noise[~FACE_MASK] = 1e3 * torch.randn_like(face_noise[~FACE_MASK])
    body_noise[~BODY_MASK] = float("nan")
    out_a = net_a(face, body, FACE_MASK, BODY_MASK)
    out_b = net_b(face_noise, body_noise, FACE_MASK, BODY_MASK)
    assert torch.equal(out_a, out_b)
    for (name, a), (_, b) in zip(net_a.state_dict().items(), net_b.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_a_row_depends_only_on_its_present_modalities() -> None:
    torch.manual_seed(2)
    net = ReIDNet(TINY).eval()
    face, body = _inputs()
    with torch.no_grad():
        both = net(face, body, FACE_MASK, BODY_MASK)
        body_only = net(face, body, torch.zeros(5, dtype=torch.bool), torch.ones(5, dtype=torch.bool))
        # Row 1 has no face in FACE_MASK: its embedding is the body-only one.
        torch.testing.assert_close(both[1], body_only[1], rtol=1e-5, atol=1e-6)
        assert not torch.allclose(both[0], body_only[0], atol=1e-3)  # row 0's face does count


def test_frozen_ssl_stays_in_eval_mode_and_gets_no_gradient() -> None:
    net = ReIDNet(TINY).train()
    assert not net.backbone.training and not net.trunk.training and net.embed.training
    face, body = _inputs()
    net(face, body, FACE_MASK, BODY_MASK).sum().backward()
    assert all(p.grad is None for p in [*net.backbone.parameters(), *net.trunk.parameters()])
    assert net.embed.weight.grad is not None and net.embed.weight.grad.abs().sum() > 0


def test_unfrozen_ssl_trains() -> None:
    net = ReIDNet(dataclasses.replace(TINY, freeze_ssl=False)).train()
    assert net.backbone.training
    face, body = _inputs()
    net(face, body, FACE_MASK, BODY_MASK).sum().backward()
    assert net.backbone.conv1.weight.grad is not None and net.backbone.conv1.weight.grad.abs().sum() > 0


def test_rows_without_any_modality_raise() -> None:
    net = ReIDNet(TINY).eval()
    face, body = _inputs()
    with pytest.raises(DataFormatError, match=r"rows \[1, 4\]: no face and no body"):
        net(face, body, FACE_MASK, BODY_MASK & FACE_MASK)
    with pytest.raises(DataFormatError, match="bool"):
        net(face, body, FACE_MASK.long(), BODY_MASK)
    with pytest.raises(DataFormatError, match="body must be"):
        net(face, body[:3], FACE_MASK, BODY_MASK)


def test_from_ssl_checkpoint_reuses_the_ssl_features(tmp_path) -> None:
    torch.manual_seed(3)
    ssl = SSLNet(TINY)
    path = save_model_checkpoint(ssl, str(tmp_path / "ssl.pt"))
    net = reid_net_from_ssl_checkpoint(path, embed_dim=12, freeze_ssl=False)
    assert net.config.embed_dim == 12 and not net.config.freeze_ssl
    assert net.embed.out_features == 12
    face, _ = _inputs()
    ssl.eval()
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net.trunk(net.backbone(face)), ssl.features(face))


def test_ssl_net_of_another_architecture_is_refused() -> None:
    ssl = SSLNet(dataclasses.replace(TINY, proj_hidden_dim=32))
    with pytest.raises(ConfigError, match="proj_hidden_dim"):
        ReIDNet(TINY, ssl)


def test_flip_average_embeds_a_crop_and_its_mirror_in_eval_mode_only() -> None:
    torch.manual_seed(0)
    ssl = SSLNet(TINY)
    plain = ReIDNet(TINY, ssl)
    flipped = ReIDNet(dataclasses.replace(TINY, flip_average=True), ssl)  # the same weights
    flipped.embed.load_state_dict(plain.embed.state_dict())
    face, body = _inputs()
    with torch.no_grad():
        plain.eval(), flipped.eval()
        want = F.normalize(plain(face, body, FACE_MASK, BODY_MASK)
                           + plain(face.flip(3), body.flip(3), FACE_MASK, BODY_MASK), dim=1)
        got = flipped(face, body, FACE_MASK, BODY_MASK)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        # a mirrored input gets the same embedding; without the average it does not
        torch.testing.assert_close(flipped(face.flip(3), body.flip(3), FACE_MASK, BODY_MASK), got,
                                   rtol=1e-4, atol=1e-5)
        assert (plain(face.flip(3), body.flip(3), FACE_MASK, BODY_MASK)
                - plain(face, body, FACE_MASK, BODY_MASK)).abs().max() > 1e-3
        plain.train(), flipped.train()  # training mode: one pass, the views are flipped by the augmentations
        torch.manual_seed(1)
        a = plain(face, body, FACE_MASK, BODY_MASK)
        torch.manual_seed(1)
        b = flipped(face, body, FACE_MASK, BODY_MASK)
        torch.testing.assert_close(a, b)


def test_flip_average_is_kept_by_checkpoints_and_off_for_old_ones(tmp_path) -> None:
    from reid.core.models.checkpoint import load_model_checkpoint

    net = ReIDNet(dataclasses.replace(TINY, flip_average=True))
    path = str(tmp_path / "m.pt")
    save_model_checkpoint(net, path)
    _, config, _ = load_model_checkpoint(path, expected_kind="reid")
    assert config.flip_average
    old = {k: v for k, v in TINY.to_dict().items() if k != "flip_average"}  # a checkpoint from before the field
    assert ModelConfig.from_dict(old).flip_average is False
