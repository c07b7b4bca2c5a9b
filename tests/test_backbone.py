"""Model config and the shared ResNet backbone."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torchvision

from reid.core.errors import CheckpointError, ConfigError
from reid.core.models.backbone import ModelConfig, build_backbone


def test_defaults_are_the_papers() -> None:
    config = ModelConfig()
    assert (config.arch, config.face_size, config.body_size) == ("resnet50", 96, 128)
    assert (config.proj_dim, config.embed_dim, config.freeze_ssl) == (128, 256, True)
    assert config.feature_dim == 2048  # proj_hidden_dim None = backbone width


def test_config_round_trips_through_json() -> None:
    config = ModelConfig(
        arch="resnet18", face_size=32, proj_hidden_dim=64, backbone_weights="/w.pt", freeze_ssl=False
    )
    restored = ModelConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    assert set(config.to_dict()) == {f.name for f in dataclasses.fields(ModelConfig)}


@pytest.mark.parametrize(
    "values, match",
    [
        ({"arch": "vgg16"}, "arch"),
        ({"face_size": 0}, "face_size"),
        ({"proj_hidden_dim": -1}, "proj_hidden_dim"),
    ],
)
def test_invalid_config_raises(values: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ModelConfig(**values)


def test_unknown_config_key_raises() -> None:
    with pytest.raises(ConfigError, match="unknown"):
        ModelConfig.from_dict({**ModelConfig().to_dict(), "dropout": 0.1})


def test_architecture_mismatch_lists_shape_fields_only() -> None:
    a = ModelConfig(arch="resnet18", face_size=32)
    b = ModelConfig(arch="resnet34", face_size=64, embed_dim=8)
    assert [m.split(":")[0] for m in a.architecture_mismatch(b)] == ["arch", "embed_dim"]


def _torchvision_features(net: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Pooled ResNet features computed layer by layer (the reference for build_backbone)."""
    x = net.maxpool(net.relu(net.bn1(net.conv1(images))))
    x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
    return torch.flatten(net.avgpool(x), 1)


def test_backbone_loads_local_weights_and_takes_any_size(tmp_path) -> None:
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "resnet18.pt"
    torch.save(reference.state_dict(), path)  # with fc.* keys, as torchvision ships them
    backbone, width = build_backbone("resnet18", str(path))
    backbone.eval()
    assert width == 512
    with torch.no_grad():
        for size in (32, 48, 64):  # faces and bodies of different sizes share one backbone
            images = torch.randn(2, 3, size, size)
            torch.testing.assert_close(backbone(images), _torchvision_features(reference, images))


def test_random_init_differs_per_seed_and_resnet50_width() -> None:
    torch.manual_seed(1)
    a, _ = build_backbone("resnet18")
    torch.manual_seed(2)
    b, _ = build_backbone("resnet18")
    assert not torch.equal(a.conv1.weight, b.conv1.weight)
    resnet50, width = build_backbone("resnet50")
    with torch.no_grad():
        assert resnet50.eval()(torch.randn(1, 3, 32, 32)).shape == (1, width) == (1, 2048)


def test_slim_resnet10_is_a_quarter_width_resnet_with_its_weights_file_round_trip(tmp_path) -> None:
    """The tests' backbone: torchvision's ResNet forward with one narrow BasicBlock per stage, a 128-wide
    feature, ~0.3 M parameters, and a weights file that loads back into it exactly."""
    from reid.core.models.backbone import SLIM_WIDTHS

    torch.manual_seed(0)
    net, width = build_backbone("slim_resnet10")
    assert width == SLIM_WIDTHS[-1] == 128 and 2e5 < sum(p.numel() for p in net.parameters()) < 5e5
    assert [len(getattr(net, f"layer{i}")) for i in range(1, 5)] == [1, 1, 1, 1]
    assert [getattr(net, f"layer{i}")[0].conv2.out_channels for i in range(1, 5)] == list(SLIM_WIDTHS)
    std = net.conv1.weight.std().item()  # torchvision's kaiming_normal (fan_out), not PyTorch's default uniform
    assert std == pytest.approx((2 / (SLIM_WIDTHS[0] * 7 * 7)) ** 0.5, rel=0.1)
    path = tmp_path / "slim.pt"
    torch.save(net.state_dict(), path)
    loaded, _ = build_backbone("slim_resnet10", str(path))
    with torch.no_grad():
        images = torch.randn(2, 3, 48, 48)
        torch.testing.assert_close(loaded.eval()(images), _torchvision_features(net.eval(), images))


def test_bad_weights_files_raise_checkpoint_error(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        build_backbone("resnet18", str(tmp_path / "missing.pt"))
    wrong_arch = tmp_path / "resnet34.pt"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), wrong_arch)
    with pytest.raises(CheckpointError, match="does not fit"):
        build_backbone("resnet18", str(wrong_arch))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pt"):
        build_backbone("resnet18", str(garbage))
