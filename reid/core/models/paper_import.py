"""Import the paper's published Lightning checkpoints (docs: /work/shared/SEED_CHECKPOINTS.md) as our checkpoints.

Two modules of the paper's code are supported, told apart by their ``state_dict`` keys:

* ``ssl``: ``SimCLRFaceBodyAlignedLitModule`` -- ``model.convnet.<ResNet>`` + ``model.convnet.fc.0..7`` (the
  projection head ``Linear(bias)-BN-ReLU-Linear-BN-ReLU-Linear-BN(affine=False)``) -> our :class:`SSLNet`;
* ``reid``: ``PMLIdNetFineTunedSSLBackboneFaceBodyLitModule`` -- the backbone twice (``backbone_face.convnet.*``
  and ``backbone_body.convnet.*``, ``fc.0..4``; must be identical) + ``id_net.1`` -> our :class:`ReIDNet`.

The mapping is exact: names are the same up to prefixes (``fc.i`` = our ``trunk.i`` for i < 6, ``fc.6/7`` = our
``out.0/1``, ``id_net.1`` = our ``embed``), except the bias of ``fc.0``, which our bias-free Linear cannot hold:
it is folded into the next BatchNorm (``running_mean' = running_mean - bias``; exact in eval mode, where every
imported network is used). The file is read by :func:`reid.core.models.safe_pickle.safe_load`: nothing it names is
imported or run. The written model records the paper's inference transform
(:func:`reid.core.data.augment.paper_transform_spec`) in ``ModelConfig.transform``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from reid.core import io
from reid.core.data.augment import paper_transform_spec
from reid.core.errors import CheckpointError
from reid.core.models.backbone import ARCHS, ModelConfig
from reid.core.models.checkpoint import save_model_checkpoint
from reid.core.models.reid_net import ReIDNet
from reid.core.models.safe_pickle import ForeignObject, plain, safe_load
from reid.core.models.ssl import SSLNet

KINDS = ("ssl", "reid")
MODULES = {"ssl": "SimCLRFaceBodyAlignedLitModule (identity-aware SSL)",
           "reid": "PMLIdNetFineTunedSSLBackboneFaceBodyLitModule (fine-tuned Re-ID)"}
SSL_PREFIX = "model.convnet."
FACE_PREFIX, BODY_PREFIX = "backbone_face.convnet.", "backbone_body.convnet."
ID_PREFIX = "id_net.1."
# (block type, blocks per stage) -> torchvision arch
_RESNETS = {("basic", (2, 2, 2, 2)): "resnet18", ("basic", (3, 4, 6, 3)): "resnet34",
            ("bottleneck", (3, 4, 6, 3)): "resnet50"}
_LIGHTNING_FIELDS = ("epoch", "global_step", "pytorch-lightning_version")
MAX_LISTED = 20


@dataclass
class ImportReport:
    """What an import read, mapped and wrote (JSON-safe through :meth:`to_dict`)."""

    source: str
    source_sha256: str
    kind: str
    module: str
    model_config: dict[str, Any]
    mapped: dict[str, str]  # our key -> the paper's key it came from
    folded: dict[str, str]  # paper key -> how it was folded
    duplicates_checked: list[str]  # paper keys verified equal to their first copy, then dropped
    ignored: list[str]  # paper keys dropped through ignore_prefixes
    foreign_globals: list[str]  # dotted names the unpickler replaced by inert stand-ins
    top_level_keys: list[str]
    lightning: dict[str, Any]
    hyper_parameters: Any
    warnings: list[str] = field(default_factory=list)
    out: str | None = None
    out_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _listed(keys: Sequence[str]) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - MAX_LISTED} more)" if len(keys) > MAX_LISTED else ""
    return f"{keys[:MAX_LISTED]}{more}"


def detect_kind(keys: Sequence[str]) -> str | None:
    """``ssl`` or ``reid`` from a paper ``state_dict``'s keys, None when they fit neither (or both)."""
    ssl = any(k.startswith(SSL_PREFIX) for k in keys)
    reid = any(k.startswith((FACE_PREFIX, BODY_PREFIX, ID_PREFIX)) for k in keys)
    return "ssl" if ssl and not reid else "reid" if reid and not ssl else None


def _hparam(hparams: Any, name: str) -> Any:
    """A hyper-parameter's value (a foreign enum gives its value), None when absent."""
    if isinstance(hparams, ForeignObject):  # e.g. Lightning's AttributeDict: its items were recorded
        hparams = {**hparams.items, **(hparams.state if isinstance(hparams.state, dict) else {})}
    value = hparams.get(name) if isinstance(hparams, dict) else None
    if isinstance(value, ForeignObject) and len(value.args) == 1:
        value = value.args[0]
    return value


def _check_hparams(kind: str, hparams: Any, source: str) -> list[str]:
    """Refuse paper settings the mapping cannot reproduce; returns warnings for those that only scale outputs."""
    warnings = []
    if kind == "reid":
        refused = {"fusion_strategy": ("sum", None), "start_id_net_with_relu": (False, None),
                   "use_trainable_padding_vectors": (False, None), "only_mode": (None,),
                   "by_pass_id_net": (False, None), "use_linear": (True, None)}
        bad = {k: _hparam(hparams, k) for k, ok in refused.items() if _hparam(hparams, k) not in ok}
        if bad:
            raise CheckpointError(f"{source}: the Re-ID module was trained with {bad}; only sum fusion of both "
                                  "modalities, zero padding vectors and a plain Linear id_net map onto ReIDNet")
        if _hparam(hparams, "l2_normalize_embeddings") is False:
            warnings.append("l2_normalize_embeddings=False in the paper: our embeddings are its outputs L2-normalised")
    elif _hparam(hparams, "normalize_projections") is False:
        warnings.append("normalize_projections=False in the paper: our SSL projections are L2-normalised "
                        "(and our Re-ID features always are)")
    return warnings


def _resnet_arch(trunk: dict[str, torch.Tensor], source: str) -> str:
    """The torchvision arch whose block layout the ResNet keys (``layer3.5.conv1.weight`` ...) have."""
    blocks = tuple(len({k.split(".")[1] for k in trunk if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    block = "bottleneck" if "layer1.0.conv3.weight" in trunk else "basic"
    arch = _RESNETS.get((block, blocks))
    if arch is None:
        raise CheckpointError(f"{source}: a ResNet with {block} blocks {blocks} per stage is none of {sorted(ARCHS)}")
    return arch


def _paper_key(ours: str, kind: str) -> str:
    """The paper key (relative to the convnet prefix, or absolute ``id_net.1.*``) of one of our keys."""
    head, _, rest = ours.partition(".")
    if head == "backbone":
        return rest
    index, _, name = rest.partition(".")
    if head == "trunk":
        return f"fc.{index}.{name}"
    if head == "out":
        return f"fc.{int(index) + 6}.{name}"
    if head == "embed":
        return f"{ID_PREFIX}{rest}"
    raise CheckpointError(f"no paper key for our {kind} key {ours!r}")


def _split(state: dict[str, torch.Tensor], kind: str, ignore: tuple[str, ...], source: str
           ) -> tuple[dict[str, torch.Tensor], list[str], list[str], list[str]]:
    """(paper network keys relative to the convnet, + ``id_net.1.*``), unexpected top-level keys, checked
    duplicates, ignored keys."""
    ignored = sorted(k for k in state if k.startswith(ignore)) if ignore else []
    state = {k: v for k, v in state.items() if not (ignore and k.startswith(ignore))}
    if kind == "ssl":
        net = {k[len(SSL_PREFIX):]: v for k, v in state.items() if k.startswith(SSL_PREFIX)}
        return net, [k for k in state if not k.startswith(SSL_PREFIX)], [], ignored
    face = {k[len(FACE_PREFIX):]: v for k, v in state.items() if k.startswith(FACE_PREFIX)}
    body = {k[len(BODY_PREFIX):]: v for k, v in state.items() if k.startswith(BODY_PREFIX)}
    if face.keys() != body.keys():
        only = [FACE_PREFIX + k for k in face.keys() - body.keys()] + [BODY_PREFIX + k for k in body.keys() - face.keys()]
        raise CheckpointError(f"{source}: backbone_face and backbone_body have different keys (the paper's "
                              f"is_face_body_aligned module shares one backbone): only in one: {_listed(only)}")
    differ = [k for k in face if face[k].shape != body[k].shape or not torch.equal(face[k], body[k])]
    if differ:
        raise CheckpointError(f"{source}: backbone_face and backbone_body differ in {len(differ)} tensors "
                              f"{_listed(differ)}; ReIDNet has one backbone for both modalities, so this "
                              "checkpoint (separate face/body backbones) cannot be imported exactly")
    net = {**face, **{k: v for k, v in state.items() if k.startswith(ID_PREFIX)}}
    unexpected = [k for k in state if not k.startswith((FACE_PREFIX, BODY_PREFIX, ID_PREFIX))]
    return net, unexpected, sorted(BODY_PREFIX + k for k in body), ignored


def _config(net: dict[str, torch.Tensor], kind: str, face_size: int, body_size: int, source: str) -> ModelConfig:
    arch = _resnet_arch({k: v for k, v in net.items() if not k.startswith("fc.")}, source)
    first = net.get("fc.0.weight")
    if first is None or first.dim() != 2 or first.shape[1] != ARCHS[arch]:
        shape = None if first is None else tuple(first.shape)
        raise CheckpointError(f"{source}: fc.0.weight {shape} is not a Linear from the {arch} feature "
                              f"({ARCHS[arch]}); not the paper's deeper projection head")
    hidden = int(first.shape[0])
    dims: dict[str, Any] = {"proj_hidden_dim": None if hidden == ARCHS[arch] else hidden}
    if kind == "ssl" and "fc.6.weight" in net:
        dims["proj_dim"] = int(net["fc.6.weight"].shape[0])
    if kind == "reid" and f"{ID_PREFIX}weight" in net:
        dims["embed_dim"] = int(net[f"{ID_PREFIX}weight"].shape[0])
    return ModelConfig(arch=arch, face_size=face_size, body_size=body_size, freeze_ssl=True,
                       transform=paper_transform_spec(face_size, body_size), **dims)


def convert_state_dict(state: dict[str, torch.Tensor], kind: str, source: str = "<state_dict>",
                       face_size: int = 96, body_size: int = 128, ignore_prefixes: Sequence[str] = ()
                       ) -> tuple[nn.Module, dict[str, Any]]:
    """A paper ``state_dict`` of module ``kind`` -> (our SSLNet/ReIDNet in eval mode, mapping details).

    Raises CheckpointError listing (at most 20 of) the missing and unexpected keys, the shapes that do not fit,
    or the backbone tensors whose face and body copies differ.
    """
    net, unexpected, duplicates, ignored = _split(state, kind, tuple(ignore_prefixes), source)
    config = _config(net, kind, face_size, body_size, source)
    model: nn.Module = (SSLNet if kind == "ssl" else ReIDNet)(config)
    target = model.state_dict()
    mapping = {ours: _paper_key(ours, kind) for ours in target}
    expected = set(mapping.values()) | {"fc.0.bias"}
    prefix = SSL_PREFIX if kind == "ssl" else FACE_PREFIX
    missing = sorted(expected - net.keys())
    unexpected = sorted(unexpected + [k if k.startswith(ID_PREFIX) else prefix + k for k in net if k not in expected])
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: not the paper's {MODULES[kind]} checkpoint as a {config.arch} with a "
            f"{config.feature_dim}-wide head: {len(missing)} missing keys "
            f"{_listed([k if k.startswith(ID_PREFIX) else prefix + k for k in missing])}, "
            f"{len(unexpected)} unexpected keys {_listed(unexpected)} (keys of tensor-free extras can be "
            "dropped with ignore_prefixes / --ignore-prefixes)")
    ours: dict[str, torch.Tensor] = {}
    bad_shapes = []
    for key, paper in mapping.items():
        value = net[paper]
        if value.shape != target[key].shape:
            bad_shapes.append(f"{paper} {tuple(value.shape)} -> {key} {tuple(target[key].shape)}")
        ours[key] = value.detach().to(target[key].dtype).clone()
    if bad_shapes:
        raise CheckpointError(f"{source}: shapes do not fit a {kind} {config.arch}: {_listed(bad_shapes)}")
    bias = net["fc.0.bias"].detach().to(torch.float64)
    if bias.shape != ours["trunk.1.running_mean"].shape:
        raise CheckpointError(f"{source}: fc.0.bias {tuple(bias.shape)} does not fit fc.1 (BatchNorm)")
    # Eval-mode BN(Wx + b) = gamma * (Wx + b - mean) / sqrt(var + eps) + beta = BN'(Wx) with mean' = mean - b.
    ours["trunk.1.running_mean"] = (ours["trunk.1.running_mean"].double() - bias).to(torch.float32)
    model.load_state_dict(ours, strict=True)
    model.eval()
    details = {
        "config": config, "ignored": ignored, "duplicates_checked": duplicates,
        "mapped": {k: (v if v.startswith(ID_PREFIX) else prefix + v) for k, v in mapping.items()},
        "folded": {prefix + "fc.0.bias":
                   f"subtracted from trunk.1.running_mean (max |bias| {bias.abs().max().item():.4g})"},
    }
    return model, details


def read_paper_checkpoint(data: bytes, source: str) -> tuple[dict[str, Any], dict[str, torch.Tensor], list[str]]:
    """(the checkpoint dict, its ``state_dict`` of tensors, foreign globals met) of a Lightning ``.ckpt``'s bytes."""
    ckpt, foreign = safe_load(data, source)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{source}: expected a Lightning checkpoint dict, got {type(ckpt).__name__}")
    state = ckpt.get("state_dict", ckpt)
    if isinstance(state, ForeignObject):
        state = state.items
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{source}: no state_dict in the checkpoint (top-level keys {_listed(list(ckpt))})")
    not_tensors = [str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{source}: state_dict entries that are not tensors: {_listed(not_tensors)}")
    return ckpt, state, foreign


def convert_paper_checkpoint(data: bytes, source: str = "<bytes>", kind: str | None = None, face_size: int = 96,
                             body_size: int = 128, ignore_prefixes: Sequence[str] = ()
                             ) -> tuple[nn.Module, ImportReport]:
    """The paper checkpoint in ``data`` as our network (eval mode, ``model.config`` with the paper's transform)
    and its :class:`ImportReport` (``out`` unset). ``kind`` None: detected from the keys."""
    if kind is not None and kind not in KINDS:
        raise CheckpointError(f"kind={kind!r}: expected one of {KINDS}")
    ckpt, state, foreign = read_paper_checkpoint(data, source)
    detected = detect_kind(list(state))
    if detected is None:
        raise CheckpointError(f"{source}: the state_dict keys fit neither paper module ({MODULES['ssl']}: "
                              f"{SSL_PREFIX}*; {MODULES['reid']}: {FACE_PREFIX}*, {BODY_PREFIX}*, {ID_PREFIX}*); "
                              f"keys: {_listed(list(state))}")
    if kind is not None and kind != detected:
        raise CheckpointError(f"{source}: asked for kind {kind!r}, but the keys are those of the {detected!r} "
                              f"module {MODULES[detected]}")
    hparams = ckpt.get("hyper_parameters")
    warnings = _check_hparams(detected, hparams, source) if hparams is not None else []
    model, details = convert_state_dict(state, detected, source, face_size, body_size, ignore_prefixes)
    report = ImportReport(
        source=source, source_sha256=hashlib.sha256(data).hexdigest(), kind=detected, module=MODULES[detected],
        model_config=details["config"].to_dict(), mapped=details["mapped"], folded=details["folded"],
        duplicates_checked=details["duplicates_checked"], ignored=details["ignored"], foreign_globals=foreign,
        top_level_keys=sorted(str(k) for k in ckpt), lightning={k: plain(ckpt.get(k)) for k in _LIGHTNING_FIELDS},
        hyper_parameters=plain(hparams), warnings=warnings)
    return model, report


def import_paper_checkpoint(src: str, out: str, kind: str | None = None, face_size: int = 96, body_size: int = 128,
                            ignore_prefixes: Sequence[str] = ()) -> ImportReport:
    """Convert the paper checkpoint at ``src`` (path or URI) and write our checkpoint to ``out`` (atomically,
    only after every check passed). The result loads with :func:`reid.core.models.checkpoint.load_model_checkpoint`
    and is accepted by ``jobs/label.py --model`` (kind reid) and ``jobs/finetune.py --ssl-checkpoint`` (ssl)."""
    try:
        data = io.read_bytes(src)
    except (FileNotFoundError, IsADirectoryError, OSError) as e:
        raise CheckpointError(f"{src}: cannot read the paper checkpoint ({e})") from None
    model, report = convert_paper_checkpoint(data, src, kind, face_size, body_size, ignore_prefixes)
    extra = {"imported_from": {"source": src, "sha256": report.source_sha256, "module": report.module,
                               **{k: v for k, v in report.lightning.items() if isinstance(v, int | str)}}}
    save_model_checkpoint(model, out, extra=extra)
    report.out, report.out_sha256 = out, hashlib.sha256(io.read_bytes(out)).hexdigest()
    return report
