"""Networks: the shared ResNet backbone, the SSL network, the Re-ID network, checkpoints and export."""

from reid.core.models.backbone import ModelConfig, build_backbone
from reid.core.models.checkpoint import (
    load_model_checkpoint,
    reid_net_from_ssl_checkpoint,
    save_model_checkpoint,
)
from reid.core.models.reid_net import ReIDNet
from reid.core.models.ssl import SSLNet

__all__ = [
    "ModelConfig",
    "ReIDNet",
    "SSLNet",
    "build_backbone",
    "load_model_checkpoint",
    "reid_net_from_ssl_checkpoint",
    "save_model_checkpoint",
]
