"""One checkpoint format for the SSL and Re-ID networks, loadable without Ray.

A checkpoint is a dict saved with ``torch.save``::

    {"format_version": 1, "kind": "ssl" | "reid", "model_config": ModelConfig.to_dict(),
     "state_dict": model.state_dict(), "extra": {...}}   # extra is optional

It is read with ``torch.load(weights_only=True)``, so ``extra`` may hold only tensors, numbers, strings,
bools, None and lists/tuples/dicts of those (an optimizer's ``state_dict()`` qualifies). Paths are local
files or URIs that ``pyarrow.fs.FileSystem.from_uri`` understands (``s3://...``).
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import torch
from torch import nn

from reid.core import io as reid_io
from reid.core.errors import CheckpointError, ConfigError
from reid.core.models.backbone import ModelConfig
from reid.core.models.reid_net import ReIDNet
from reid.core.models.ssl import SSLNet

FORMAT_VERSION = 1
KINDS = ("ssl", "reid")


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP (``.module``) or ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def checkpoint_payload(model: nn.Module, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint dict of an SSLNet or ReIDNet (possibly wrapped in DDP), tensors moved to CPU."""
    model = _unwrap(model)
    if isinstance(model, ReIDNet):
        kind = "reid"
    elif isinstance(model, SSLNet):
        kind = "ssl"
    else:
        raise CheckpointError(f"cannot checkpoint a {type(model).__name__}: expected SSLNet or ReIDNet")
    payload: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "model_config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    if extra is not None:
        payload["extra"] = extra
    return payload


def save_model_checkpoint(model: nn.Module, path: str, extra: dict[str, Any] | None = None) -> str:
    """Write ``model``'s checkpoint to ``path``, local or an object store, atomically
    (:func:`reid.core.io.write_bytes_atomic`); returns ``path``."""
    buffer = io.BytesIO()
    torch.save(checkpoint_payload(model, extra), buffer)
    reid_io.write_bytes_atomic(path, buffer.getvalue())
    return path


def _read_bytes(path: str) -> bytes:
    try:
        return reid_io.read_bytes(path)
    except (FileNotFoundError, IsADirectoryError) as e:
        raise CheckpointError(f"{path}: checkpoint file not found ({e})") from e
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read checkpoint ({e})") from e


def load_checkpoint_payload(path: str) -> dict[str, Any]:
    """The raw checkpoint dict at ``path``, read with ``weights_only=True`` and its header validated."""
    return payload_from_bytes(_read_bytes(path), path)


def payload_from_bytes(data: bytes, path: str = "<bytes>") -> dict[str, Any]:
    """The checkpoint dict in ``data`` (the bytes of one read: hash and load the same bytes); ``path`` names
    it in errors."""
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle/zip errors come in many types; all mean "not our checkpoint"
        raise CheckpointError(f"{path}: not a weights-only checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: expected a checkpoint dict, got {type(payload).__name__}")
    missing = [k for k in ("format_version", "kind", "model_config", "state_dict") if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: not a model checkpoint, missing keys {missing}")
    if payload["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {payload['format_version']!r}, this code reads {FORMAT_VERSION}"
        )
    if payload["kind"] not in KINDS:
        raise CheckpointError(f"{path}: unknown kind {payload['kind']!r}, expected one of {KINDS}")
    return payload


def model_from_payload(
    payload: dict[str, Any],
    source: str = "<in-memory checkpoint>",
    expected_kind: str | None = None,
    expected_config: ModelConfig | None = None,
) -> tuple[nn.Module, ModelConfig, dict[str, Any]]:
    """Build the model a checkpoint dict describes; ``source`` names it in errors."""
    kind = payload["kind"]
    if expected_kind is not None and kind != expected_kind:
        raise CheckpointError(f"{source}: checkpoint kind is {kind!r}, expected {expected_kind!r}")
    try:
        config = ModelConfig.from_dict(payload["model_config"])
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{source}: invalid model_config: {e}") from e
    if expected_config is not None:
        mismatch = config.architecture_mismatch(expected_config)
        if kind == "ssl":
            mismatch = [m for m in mismatch if not m.startswith("embed_dim")]
        if mismatch:
            raise CheckpointError(f"{source}: architecture differs from the requested one: {mismatch}")
    # The weights come from the state dict: never re-read a backbone file that may not exist here.
    build_config = dataclasses.replace(config, backbone_weights=None)
    _check_state_dict(payload["state_dict"], kind, build_config, source)  # before a byte of the network exists
    model: nn.Module = ReIDNet(build_config) if kind == "reid" else SSLNet(build_config)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except (RuntimeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{source}: state_dict does not fit a {kind} {config.arch}: {e}") from e
    model.config = config
    return model, config, payload.get("extra") or {}


def _check_state_dict(state: Any, kind: str, config: ModelConfig, source: str) -> None:
    """Refuse a state dict whose keys or tensor shapes are not those of the network ``config`` describes, from a
    skeleton on torch's meta device (shapes only, no memory): the real network is built only for one that fits."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{source}: state_dict is a {type(state).__name__}, not a dict of tensors")
    with torch.device("meta"):
        skeleton = ReIDNet(config) if kind == "reid" else SSLNet(config)
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [f"{k}: {_shape(state[k])} != {list(expected[k])}" for k in sorted(set(expected) & set(state))
             if not isinstance(state[k], torch.Tensor) or tuple(state[k].shape) != expected[k]]
    if missing or unexpected or wrong:
        raise CheckpointError(f"{source}: state_dict does not fit a {kind} {config.arch}: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}, wrong shape {wrong[:5]}")


def _shape(value: Any) -> str:
    return str(list(value.shape)) if isinstance(value, torch.Tensor) else f"a {type(value).__name__}"


def load_model_checkpoint(
    path: str, expected_kind: str | None = None, expected_config: ModelConfig | None = None
) -> tuple[nn.Module, ModelConfig, dict[str, Any]]:
    """Load an SSLNet or ReIDNet (on CPU, in train mode) from ``path``: returns (model, config, extra).

    Raises CheckpointError naming ``path`` when the file is missing or unreadable, the kind is not
    ``expected_kind``, or the architecture differs from ``expected_config``.
    """
    return model_from_payload(load_checkpoint_payload(path), path, expected_kind, expected_config)


def reid_net_from_ssl_checkpoint(path: str, embed_dim: int | None = None, freeze_ssl: bool | None = None,
                                 flip_average: bool | None = None) -> ReIDNet:
    """A Re-ID net with the SSL part of an ``ssl`` checkpoint and a fresh ``embed`` Linear."""
    ssl_net, ssl_config, _ = load_model_checkpoint(path, expected_kind="ssl")
    changes: dict[str, object] = {}
    if embed_dim is not None:
        changes["embed_dim"] = embed_dim
    if freeze_ssl is not None:
        changes["freeze_ssl"] = freeze_ssl
    if flip_average is not None:
        changes["flip_average"] = flip_average
    return ReIDNet(dataclasses.replace(ssl_config, **changes), ssl_net)
