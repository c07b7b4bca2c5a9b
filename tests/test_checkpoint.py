"""The one checkpoint format: round trips and every refusal names the path and the reason."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from reid.core.errors import CheckpointError
from reid.core.models.backbone import ModelConfig
from reid.core.models.checkpoint import (
    FORMAT_VERSION,
    checkpoint_payload,
    load_model_checkpoint,
    save_model_checkpoint,
)
from reid.core.models.reid_net import ReIDNet
from reid.core.models.ssl import SSLNet

TINY = ModelConfig(arch="resnet18", face_size=32, body_size=48, proj_hidden_dim=64, proj_dim=16, embed_dim=8)


def _reid_inputs() -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    face, body = torch.randn(3, 3, 32, 32, generator=gen), torch.randn(3, 3, 48, 48, generator=gen)
    return face, body, torch.tensor([True, False, True]), torch.tensor([True, True, False])


def test_reid_round_trip_with_optimizer_state(tmp_path) -> None:
    torch.manual_seed(0)
    net = ReIDNet(TINY)
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    net(*_reid_inputs()).sum().backward()
    optimizer.step()
    extra = {"epoch": 3, "optimizer": optimizer.state_dict(), "run_id": "abc"}
    path = save_model_checkpoint(net, str(tmp_path / "sub" / "reid.pt"), extra=extra)
    assert os.listdir(tmp_path / "sub") == ["reid.pt"]  # no temporary file left behind

    loaded, config, loaded_extra = load_model_checkpoint(path, expected_kind="reid", expected_config=TINY)
    assert isinstance(loaded, ReIDNet) and config == TINY
    assert loaded_extra["epoch"] == 3 and loaded_extra["run_id"] == "abc"
    fresh = torch.optim.AdamW([p for p in loaded.parameters() if p.requires_grad], lr=1e-3)
    fresh.load_state_dict(loaded_extra["optimizer"])
    with torch.no_grad():
        assert torch.equal(loaded.eval()(*_reid_inputs()), net.eval()(*_reid_inputs()))


def test_ssl_round_trip_of_a_compiled_wrapper_keeps_backbone_path(tmp_path) -> None:
    torch.manual_seed(1)
    weights = tmp_path / "backbone.pt"
    torch.save(SSLNet(TINY).backbone.state_dict(), weights)
    config = dataclasses.replace(TINY, backbone_weights=str(weights))
    net = SSLNet(config)
    path = save_model_checkpoint(torch.compile(net), str(tmp_path / "ssl.pt"))  # saved through the wrapper
    weights.unlink()  # loading must not need the original backbone file
    loaded, loaded_config, extra = load_model_checkpoint(path)
    assert isinstance(loaded, SSLNet) and loaded_config == config and extra == {}
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(images), net.eval()(images))


def test_payload_is_what_the_format_promises() -> None:
    payload = checkpoint_payload(SSLNet(TINY), extra={"step": 1})
    assert payload["format_version"] == FORMAT_VERSION and payload["kind"] == "ssl"
    assert payload["model_config"] == TINY.to_dict() and payload["extra"] == {"step": 1}
    assert set(payload["state_dict"]) == set(SSLNet(TINY).state_dict())


def test_missing_file(tmp_path) -> None:
    path = str(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match=rf"{path}.*not found"):
        load_model_checkpoint(path)


def test_wrong_kind_and_architecture(tmp_path) -> None:
    path = save_model_checkpoint(SSLNet(TINY), str(tmp_path / "ssl.pt"))
    with pytest.raises(CheckpointError, match=rf"{path}.*kind is 'ssl', expected 'reid'"):
        load_model_checkpoint(path, expected_kind="reid")
    with pytest.raises(CheckpointError, match=rf"{path}.*arch: 'resnet18' != 'resnet34'"):
        load_model_checkpoint(path, expected_config=dataclasses.replace(TINY, arch="resnet34"))
    # embed_dim does not shape an SSL network: it is not a mismatch there.
    load_model_checkpoint(path, expected_config=dataclasses.replace(TINY, embed_dim=99, face_size=64))


class _NotAWeight:
    pass


@pytest.mark.parametrize(
    "content, match",
    [
        (b"\x00garbage", "not a weights-only checkpoint"),
        ({"kind": "ssl"}, "missing keys"),
        ({"format_version": 99, "kind": "ssl", "model_config": {}, "state_dict": {}}, "format_version 99"),
        ({"format_version": 1, "kind": "gan", "model_config": {}, "state_dict": {}}, "unknown kind"),
        (
            {"format_version": 1, "kind": "ssl", "model_config": {"arch": "vgg"}, "state_dict": {}},
            "model_config",
        ),
        (
            {"format_version": 1, "kind": "ssl", "model_config": TINY.to_dict(), "state_dict": {}},
            "does not fit",
        ),
        ({"evil": _NotAWeight()}, "not a weights-only checkpoint"),
    ],
)
def test_bad_files_raise_checkpoint_error(tmp_path, content, match: str) -> None:
    path = tmp_path / "bad.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(CheckpointError, match=match) as error:
        load_model_checkpoint(str(path))
    assert str(path) in str(error.value)


def test_only_our_models_can_be_saved(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="Linear"):
        save_model_checkpoint(torch.nn.Linear(2, 2), str(tmp_path / "x.pt"))


@pytest.mark.parametrize("change,match", [
    ({"embed_dim": 10**9}, "embed_dim=1000000000: at most 8192"),
    ({"proj_hidden_dim": 10**7}, "proj_hidden_dim=10000000: at most 16384"),
    ({"face_size": 10**6}, "face_size=1000000: at most 1024"),
    ({"body_size": "128"}, "body_size='128': must be an integer"),
    ({"proj_dim": 1.5}, "proj_dim=1.5: must be an integer"),
])
def test_crafted_model_sizes_are_refused_before_any_allocation(tmp_path, change, match) -> None:
    """A model_config asking for an absurd network (a Linear of 2048 x 1e9 floats: 8 TB) is refused from the
    config alone; nothing of the network is built."""
    payload = {**checkpoint_payload(ReIDNet(TINY)), "model_config": {**TINY.to_dict(), **change}}
    path = tmp_path / "crafted.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=f"invalid model_config: {match}"):
        load_model_checkpoint(str(path))


def test_a_state_dict_of_other_shapes_is_refused_before_the_network_is_built(tmp_path, monkeypatch) -> None:
    """The state dict is checked against a shapes-only skeleton (torch's meta device): a tensor of another shape,
    a missing or an extra key is named, and no real network is allocated for it."""
    from reid.core.models import checkpoint

    state = checkpoint_payload(ReIDNet(TINY))["state_dict"]
    state["embed.weight"] = torch.zeros(3, 3)
    state.pop("embed.bias")
    state["extra.weight"] = torch.zeros(1)
    torch.save({**checkpoint_payload(ReIDNet(TINY)), "state_dict": state}, tmp_path / "crafted.pt")
    built = []
    real = checkpoint.ReIDNet

    def spy(*args, **kwargs):
        built.append(torch.empty(0).device.type)  # the default device while the network is built
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "ReIDNet", spy)
    with pytest.raises(CheckpointError, match=r"does not fit a reid resnet18: missing \['embed.bias'\], unexpected "
                                              r"\['extra.weight'\], wrong shape \['embed.weight: \[3, 3\] != \[8, 64\]'\]"):
        load_model_checkpoint(str(tmp_path / "crafted.pt"))
    assert built == ["meta"]
