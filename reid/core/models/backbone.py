"""The model configuration and the shared ResNet backbone."""

from __future__ import annotations

import copy
import dataclasses
import numbers
from dataclasses import dataclass
from typing import Any

import torch
import torchvision
from torch import nn

from reid.core.data.augment import check_transform_spec, default_transform_spec
from reid.core.errors import CheckpointError, ConfigError

ARCHS: dict[str, int] = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "slim_resnet10": 128}
"""Supported backbones and the width of their pooled feature: torchvision's ResNets, and ``slim_resnet10``."""

# slim_resnet10: torchvision's ResNet layout (stem, 4 stages, global pooling) with one BasicBlock per stage and a
# quarter of the widths: ~0.3 M parameters against ResNet-18's 11 M. For tests and smoke runs: its checkpoints
# are ~1 MB rather than ~190 MB, and a 2-worker CPU run spends its time on the system, not on convolutions.
SLIM_WIDTHS = (16, 32, 64, 128)

# The largest sizes a model config may ask for: far beyond the paper's (faces 96 px, bodies 128 px, widths 2048,
# 128, 256), small enough that no crafted checkpoint makes the network's allocation exhaust memory.
MAX_SIZES: dict[str, int] = {"face_size": 1024, "body_size": 1024, "proj_hidden_dim": 16384, "proj_dim": 8192,
                             "embed_dim": 8192}

# Fields that change the shape of a parameter: a checkpoint and a requested config must agree on them.
ARCHITECTURE_FIELDS = ("arch", "proj_hidden_dim", "proj_dim", "embed_dim")
# What a run resumed from a checkpoint, or a job using one, must share with it: its shape and its input sizes.
SSL_FIELDS = ("arch", "face_size", "body_size", "proj_hidden_dim", "proj_dim")
REID_FIELDS = ("arch", "face_size", "body_size", "embed_dim")


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the SSL and Re-ID networks; defaults are the paper's.

    ``proj_hidden_dim=None`` means "the backbone's width" (2048 for ResNet-50).
    ``backbone_weights`` is a local torchvision ResNet state-dict file, or None for random init.
    ``transform`` is the model's inference transform spec (:func:`reid.core.data.augment.check_transform_spec`;
    its sizes are ``face_size``/``body_size``), recorded by models that need their own (imported paper
    checkpoints); None means today's :func:`reid.core.data.augment.eval_transform`. Read it as :attr:`transform_spec`.
    ``flip_average``: in eval mode the Re-ID net embeds each crop and its mirror image and averages the two
    (test-time flip; the training views are flipped at random, so both are in-distribution). Not an
    architecture field: the same weights load either way; False for checkpoints that predate it (the paper's).
    """

    arch: str = "resnet50"
    face_size: int = 96
    body_size: int = 128
    proj_hidden_dim: int | None = None
    proj_dim: int = 128
    embed_dim: int = 256
    backbone_weights: str | None = None
    freeze_ssl: bool = True
    flip_average: bool = False
    transform: dict[str, Any] | None = dataclasses.field(default=None, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.arch, str) or self.arch not in ARCHS:
            raise ConfigError(f"arch={self.arch!r}: expected one of {sorted(ARCHS)}")
        for name, limit in MAX_SIZES.items():
            value = getattr(self, name)
            if name == "proj_hidden_dim" and value is None:
                continue
            if not isinstance(value, numbers.Integral) or isinstance(value, bool):
                raise ConfigError(f"{name}={value!r}: must be an integer")
            if value <= 0:
                raise ConfigError(f"{name}={value}: must be positive" + (" or None" if name == "proj_hidden_dim"
                                                                           else ""))
            if value > limit:
                raise ConfigError(f"{name}={value}: at most {limit} (a larger network is no model of ours)")
        if self.transform is not None:
            try:
                spec = check_transform_spec(self.transform)
            except ValueError as e:
                raise ConfigError(f"transform: {e}") from None
            sizes = (spec["face"]["size"], spec["body"]["size"])
            if sizes != (self.face_size, self.body_size):
                raise ConfigError(f"transform sizes face/body {sizes[0]}/{sizes[1]} != face_size/body_size "
                                  f"{self.face_size}/{self.body_size}")
            object.__setattr__(self, "transform", spec)  # a validated copy: the caller's dict is not shared

    @property
    def transform_spec(self) -> dict[str, Any]:
        """The inference transform spec: the recorded one, else that of today's ``eval_transform``."""
        if self.transform is not None:
            return copy.deepcopy(self.transform)
        return default_transform_spec(self.face_size, self.body_size)

    @property
    def backbone_dim(self) -> int:
        """Width of the pooled backbone feature."""
        return ARCHS[self.arch]

    @property
    def feature_dim(self) -> int:
        """Width of the Re-ID feature: the projection head's hidden width."""
        return self.proj_hidden_dim or self.backbone_dim

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict with every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Inverse of ``to_dict``; unknown keys are an error (they mean another code version)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown model config keys {unknown}; known: {sorted(known)}")
        return cls(**values)

    def architecture_mismatch(self, other: ModelConfig) -> list[str]:
        """Names of the shape-defining fields on which ``self`` and ``other`` differ, as 'name: a != b'."""
        return [
            f"{name}: {getattr(self, name)!r} != {getattr(other, name)!r}"
            for name in ARCHITECTURE_FIELDS
            if getattr(self, name) != getattr(other, name)
        ]


def build_backbone(arch: str, weights_path: str | None = None) -> tuple[nn.Module, int]:
    """A ResNet without its classifier (torchvision's, or :func:`slim_resnet10`), and its feature width.

    Input (N, 3, H, W) of any size >= 32 px (global average pooling); output (N, width).
    ``weights_path`` is a local torchvision state dict (``fc.*`` keys are ignored); None = random init.
    """
    if arch not in ARCHS:
        raise ConfigError(f"arch={arch!r}: expected one of {sorted(ARCHS)}")
    net = slim_resnet10() if arch == "slim_resnet10" else getattr(torchvision.models, arch)(weights=None)
    net.fc = nn.Identity()
    if weights_path is not None:
        _load_backbone_weights(net, weights_path)
    return net, ARCHS[arch]


def slim_resnet10() -> nn.Module:
    """ResNet-10 at a quarter width (:data:`SLIM_WIDTHS`), built from torchvision's ResNet with its stem and
    stages swapped for narrow ones; same module names (``conv1``, ``layer1``..``layer4``, ``fc``) and forward."""
    from torchvision.models.resnet import BasicBlock, ResNet

    net = ResNet(BasicBlock, [1, 1, 1, 1])
    net.conv1 = nn.Conv2d(3, SLIM_WIDTHS[0], kernel_size=7, stride=2, padding=3, bias=False)
    net.bn1 = nn.BatchNorm2d(SLIM_WIDTHS[0])
    net.inplanes = SLIM_WIDTHS[0]
    for index, width in enumerate(SLIM_WIDTHS):
        setattr(net, f"layer{index + 1}", net._make_layer(BasicBlock, width, 1, stride=1 if index == 0 else 2))
    for module in net.modules():  # torchvision's ResNet initialisation, for the swapped-in modules too
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    return net


def _load_backbone_weights(net: nn.Module, path: str) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: backbone weights file not found") from e
    except Exception as e:  # unpickling errors of several types: all mean "not a weights file"
        raise CheckpointError(f"{path}: not a weights-only state dict ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, got {type(state).__name__}")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: does not fit the backbone: {e}") from e
