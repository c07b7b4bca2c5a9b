"""Networks: the shared ResNet backbone, the SSL network, the Re-ID network, checkpoints and export."""

from reid.models.backbone import ModelConfig, build_backbone
from reid.models.checkpoint import load_model_checkpoint, reid_net_from_ssl_checkpoint, save_model_checkpoint
from reid.models.reid_net import ReIDNet
from reid.models.ssl import SSLNet

__all__ = [
    "ModelConfig",
    "ReIDNet",
    "SSLNet",
    "build_backbone",
    "load_model_checkpoint",
    "reid_net_from_ssl_checkpoint",
    "save_model_checkpoint",
]
