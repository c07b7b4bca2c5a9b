"""Exported Re-ID nets give the eager model's embeddings (masks included)."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from reid.core.models.backbone import ModelConfig
from reid.core.models.export import (
    INPUT_NAMES,
    example_inputs,
    export_onnx,
    export_program,
    export_torchscript,
)
from reid.core.models.reid_net import ReIDNet

TINY = ModelConfig(arch="slim_resnet10", face_size=32, body_size=48, proj_hidden_dim=64, proj_dim=16, embed_dim=8)


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "flip_average"])
def net(request) -> ReIDNet:
    torch.manual_seed(0)
    model = ReIDNet(dataclasses.replace(TINY, flip_average=request.param))
    with torch.no_grad():  # non-trivial BN statistics, so eval mode matters
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return model.train()


def _parity(exported, net: ReIDNet, batch_size: int) -> float:
    inputs = example_inputs(net, batch_size)
    # Missing slots hold junk: the export must ignore it just as eager mode does.
    face, body, face_mask, body_mask = inputs
    face[~face_mask] = 50.0
    body[~body_mask] = -50.0
    net.eval()
    with torch.no_grad():
        want = net(*inputs)
        got = exported(*inputs)
    net.train()
    assert (~face_mask).any() and (~body_mask).any() and (face_mask & body_mask).any()
    return (got - want).abs().max().item()


def test_torchscript_parity_at_other_batch_sizes(net: ReIDNet, tmp_path) -> None:
    path = export_torchscript(net, str(tmp_path / "reid.ts"), batch_size=4)
    assert net.training  # export does not change the caller's mode
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated in torch 2.14
        loaded = torch.jit.load(path)
    for batch_size in (4, 7):
        assert _parity(loaded, net, batch_size) < 1e-4


def test_torch_export_parity_with_dynamic_batch(net: ReIDNet, tmp_path) -> None:
    path = export_program(net, str(tmp_path / "reid.pt2"))
    loaded = torch.export.load(path).module()
    for batch_size in (3, 6):
        assert _parity(loaded, net, batch_size) < 1e-4


def test_onnx_parity_with_dynamic_batch(net: ReIDNet, tmp_path) -> None:
    import onnxruntime as ort  # a test dependency: ONNX export is part of what we ship
    path = export_onnx(net, str(tmp_path / "reid.onnx"))
    assert net.training
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

    def run(*inputs: torch.Tensor) -> torch.Tensor:
        feeds = {name: t.cpu().numpy() for name, t in zip(INPUT_NAMES, inputs, strict=True)}
        return torch.from_numpy(session.run(["embeddings"], feeds)[0])

    for batch_size in (3, 5):
        assert _parity(run, net, batch_size) < 1e-4
