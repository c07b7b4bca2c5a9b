"""Export of the Re-ID net for serving: TorchScript (traced), ``torch.export`` programs and ONNX.

Every export runs the network in eval mode and computes every row of both modalities, zeroing the
missing one with ``torch.where``: the same values as eager mode, with fixed shapes. Exports skip the
input checks, so a row with neither modality yields ``normalize(embed.bias)`` instead of an error.
The batch size stays dynamic (the range export infers: on CUDA 2..65535); the image sizes are those
of the example inputs (the config's sizes unless given). ONNX export needs the optional ``onnx`` and ``onnxscript`` packages.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch

from reid.core import io as reid_io
from reid.core.errors import ReidError
from reid.core.models.reid_net import ReIDNet

INPUT_NAMES = ("face", "body", "face_mask", "body_mask")


def example_inputs(
    net: ReIDNet, batch_size: int = 4, face_size: int | None = None, body_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random (face, body, face_mask, body_mask) on the net's device; rows with only a face, only a
    body and both all appear once ``batch_size >= 3``."""
    face_size = face_size or net.config.face_size
    body_size = body_size or net.config.body_size
    device = next(net.parameters()).device
    face = torch.randn(batch_size, 3, face_size, face_size, device=device)
    body = torch.randn(batch_size, 3, body_size, body_size, device=device)
    rows = torch.arange(batch_size, device=device)
    face_mask = rows % 3 != 1  # rows 1, 4, ... have only a body; rows 2, 5, ... only a face
    body_mask = rows % 3 != 2
    return face, body, face_mask, body_mask


@contextlib.contextmanager
def _eval_mode(net: ReIDNet) -> Iterator[None]:
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        net.train(was_training)


def _dynamic_batch() -> dict[str, dict[int, object]]:
    # AUTO, not Dim("batch", min=1): the range is device dependent (CUDA kernels guard 2..65535), so
    # let export infer it rather than fail on a range we cannot promise.
    return {name: {0: torch.export.Dim.AUTO} for name in INPUT_NAMES}


def export_torchscript(
    net: ReIDNet, path: str, batch_size: int = 4, face_size: int | None = None, body_size: int | None = None
) -> str:
    """Trace ``net`` (eval mode) into a TorchScript file at ``path``; load with ``torch.jit.load``.

    TorchScript is deprecated in torch 2.14 but still the most widely loadable format. Returns ``path``.
    """
    with _eval_mode(net), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.*deprecated")
        traced = torch.jit.trace(
            net, example_inputs(net, batch_size, face_size, body_size), check_trace=False
        )
        reid_io.write_file_atomic(path, lambda local: torch.jit.save(traced, local), ".pt")
    return path


def export_program(
    net: ReIDNet, path: str, batch_size: int = 4, face_size: int | None = None, body_size: int | None = None
) -> str:
    """``torch.export`` ``net`` (eval mode) to a ``.pt2`` file; load with ``torch.export.load(path).module()``.

    Returns ``path``.
    """
    with _eval_mode(net):
        inputs = example_inputs(net, max(batch_size, 2), face_size, body_size)
        program = torch.export.export(net, inputs, dynamic_shapes=_dynamic_batch())
        reid_io.write_file_atomic(path, lambda local: torch.export.save(program, local), ".pt2")
    return path


def export_onnx(
    net: ReIDNet, path: str, batch_size: int = 4, face_size: int | None = None, body_size: int | None = None
) -> str:
    """Export ``net`` (eval mode) to one self-contained ONNX file; inputs named face, body, face_mask,
    body_mask (bool), output ``embeddings``. Raises ReidError without ``onnx``/``onnxscript``."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ReidError(f"ONNX export needs the onnx and onnxscript packages ({e})") from e
    with _eval_mode(net):
        inputs = example_inputs(net, max(batch_size, 2), face_size, body_size)
        reid_io.write_file_atomic(path, lambda local: torch.onnx.export(
            net,
            inputs,
            local,
            dynamo=True,
            external_data=False,
            input_names=list(INPUT_NAMES),
            output_names=["embeddings"],
            dynamic_shapes=_dynamic_batch(),
        ), ".onnx")
    return path
