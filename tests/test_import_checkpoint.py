"""The paper-checkpoint importer: exact parity with the paper's forward, no foreign code run, clear refusals.

The paper's modules are rebuilt here from /work/shared/SEED_CHECKPOINTS.md (torchvision ResNet whose ``fc`` is the
deeper projection head; the Re-ID module with one backbone registered twice and ``id_net``) and saved as
Lightning would save them, with a foreign enum and a foreign AttributeDict in ``hyper_parameters`` whose module
exists only while saving.
"""

from __future__ import annotations

import contextlib
import copy
import enum
import importlib.util
import json
import os
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import nn

from reid.core.cli import run_main
from reid.core.data import augment
from reid.core.embedding import CharacterEmbedder, CropPreprocessor
from reid.core.errors import CheckpointError, ConfigError
from reid.core.models.backbone import ModelConfig
from reid.core.models.checkpoint import load_model_checkpoint, reid_net_from_ssl_checkpoint
from reid.core.models.paper_import import convert_paper_checkpoint, import_paper_checkpoint
from reid.core.models.reid_net import ReIDNet
from reid.core.models.safe_pickle import ForeignObject, safe_load
from reid.core.models.ssl import SSLNet

REPO = Path(__file__).resolve().parents[1]
ENUM_MODULE = "src.models.components.ssl_module.ssl_backbone"
DICT_MODULE = "pytorch_lightning.utilities.parsing"
TOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """These nets are tiny: one thread is fastest, and OpenMP's spinning pool crawls on shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- the paper's modules (reference) -------------------------------------------------------------------------

class PaperSimCLR(nn.Module):
    """``SimCLR(use_deeper_proj_head=True, normalize=True)``: keys ``convnet.*``, ``convnet.fc.0..7``."""

    def __init__(self, arch: str, encoder_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.convnet = getattr(torchvision.models, arch)(weights=None, num_classes=encoder_dim)
        self.convnet.fc = nn.Sequential(
            self.convnet.fc, nn.BatchNorm1d(encoder_dim), nn.ReLU(inplace=True),
            nn.Linear(encoder_dim, encoder_dim, bias=False), nn.BatchNorm1d(encoder_dim), nn.ReLU(inplace=True),
            nn.Linear(encoder_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim, affine=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.convnet(x))


class PaperSSLModule(nn.Module):
    """``SimCLRFaceBodyAlignedLitModule``: ``self.model = SimCLR(...)`` (the losses hold no tensors)."""

    def __init__(self, arch: str, encoder_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.model = PaperSimCLR(arch, encoder_dim, hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class L2(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, p=2, dim=1)


class PaperReIDModule(nn.Module):
    """``PMLIdNetFineTunedSSLBackboneFaceBodyLitModule`` (aligned, SIM_CLR_DEEPER_LAST, sum, use_linear, l2)."""

    def __init__(self, ssl: PaperSimCLR, encoder_dim: int, id_dim: int) -> None:
        super().__init__()
        backbone = copy.deepcopy(ssl)
        backbone.convnet.fc = nn.Sequential(*list(backbone.convnet.fc.children())[:-2])
        backbone.eval()
        self.backbone_face = backbone
        self.backbone_body = self.backbone_face  # the same module: its tensors are stored twice
        self.id_net = nn.Sequential(nn.Identity(), nn.Linear(encoder_dim, id_dim), L2())
        self.padding_vector_face = torch.zeros(encoder_dim)  # not trainable: a plain tensor, not in state_dict
        self.padding_vector_body = torch.zeros(encoder_dim)

    def forward(self, face, body, face_mask, body_mask) -> torch.Tensor:
        feature_face, feature_body = self.backbone_face(face), self.backbone_body(body)
        feature_face[~face_mask.bool()] = self.padding_vector_face
        feature_body[~body_mask.bool()] = self.padding_vector_body
        return self.id_net(feature_face + feature_body)


class SSLBackbone(str, enum.Enum):  # noqa: UP042 - as the paper defines it
    SIM_CLR = "SIM_CLR"
    SIM_CLR_DEEPER_LAST = "SIM_CLR_DEEPER_LAST"


class AttributeDict(dict):
    """Stand-in for Lightning's hyper-parameter container (a dict subclass from a foreign module)."""


@contextlib.contextmanager
def foreign_modules() -> Iterator[None]:
    """The paper's enum and Lightning's AttributeDict importable under their real module names, only inside."""
    added = []
    for dotted, obj in ((ENUM_MODULE, SSLBackbone), (DICT_MODULE, AttributeDict)):
        parts = dotted.split(".")
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            assert name not in sys.modules or name in added, f"{name} would be shadowed"
            if name not in sys.modules:
                sys.modules[name] = types.ModuleType(name)
                added.append(name)
        setattr(sys.modules[dotted], obj.__name__, obj)
        obj.__module__, obj.__qualname__ = dotted, obj.__name__
    try:
        yield
    finally:
        for name in reversed(added):
            del sys.modules[name]
        SSLBackbone.__module__ = AttributeDict.__module__ = __name__


def _calibrate(module: nn.Module, bias_std: float = 0.5, seed: int = 0) -> None:
    """Realistic BN statistics: fc.0 gets a large bias, then one train-mode batch sets every running mean/var
    (momentum 1), then the statistics are perturbed so they are no batch's exactly."""
    gen = torch.Generator().manual_seed(seed)
    fc0 = module.convnet.fc[0]
    with torch.no_grad():
        fc0.bias.copy_(torch.randn(fc0.bias.shape, generator=gen) * bias_std)
        bns = [m for m in module.modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)]
        for bn in bns:
            bn.momentum = 1.0
        module.train()(torch.randn(8, 3, 48, 48, generator=gen))
        for bn in bns:
            bn.momentum = 0.1
            bn.running_mean.add_(0.1 * torch.randn(bn.running_mean.shape, generator=gen))
            bn.running_var.mul_(torch.empty(bn.running_var.shape).uniform_(0.8, 1.25, generator=gen))
            bn.num_batches_tracked.fill_(1234)
            if bn.affine:
                bn.weight.mul_(torch.empty(bn.weight.shape).uniform_(0.5, 1.5, generator=gen))
                bn.bias.add_(0.1 * torch.randn(bn.bias.shape, generator=gen))
    module.eval()


def _lightning_save(module: nn.Module, hparams: dict, path: Path, state_dict: dict | None = None) -> Path:
    """``module`` saved as a Lightning checkpoint (optimizer and scheduler states after one step)."""
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    for p in params:
        p.grad = torch.zeros_like(p)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.95)
    optimizer.step()
    scheduler.step()
    ckpt = {"epoch": 7, "global_step": 1234, "pytorch-lightning_version": "1.9.5",
            "state_dict": state_dict if state_dict is not None else module.state_dict(),
            "loops": {"fit_loop": {"epoch_progress": {"total": {"ready": 8}}}},
            "callbacks": {"ModelCheckpoint{'monitor': 'val/loss'}": {"best_model_score": torch.tensor(0.12),
                                                                     "best_model_path": "/x/epoch=7.ckpt"}},
            "optimizer_states": [optimizer.state_dict()], "lr_schedulers": [scheduler.state_dict()],
            "hparams_name": "kwargs"}
    with foreign_modules():
        ckpt["hyper_parameters"] = AttributeDict(hparams)
        torch.save(ckpt, path)
    return path


def paper_ssl(tmp_path: Path, arch: str = "resnet18", width: int = 512, hidden: int = 128, seed: int = 0
              ) -> tuple[PaperSSLModule, Path]:
    torch.manual_seed(seed)
    module = PaperSSLModule(arch, width, hidden)
    _calibrate(module.model, seed=seed)
    hparams = {"model_name": arch, "encoder_dim": width, "use_deeper_proj_head": True,
               "normalize_projections": True, "hidden_dim": hidden, "temperature": 0.07, "loss_fn": "info_nce"}
    return module.eval(), _lightning_save(module, hparams, tmp_path / "paper_ssl.ckpt")


def paper_reid(tmp_path: Path, arch: str = "resnet18", width: int = 512, hidden: int = 128, id_dim: int = 256,
               seed: int = 0, state_dict: dict | None = None) -> tuple[PaperReIDModule, Path]:
    ssl, _ = paper_ssl(tmp_path, arch, width, hidden, seed)
    torch.manual_seed(seed + 1)
    module = PaperReIDModule(ssl.model, width, id_dim)
    for p in module.backbone_face.parameters():
        p.requires_grad_(False)
    hparams = {"is_face_body_aligned_module": True, "ssl_backbone_face": SSLBackbone.SIM_CLR_DEEPER_LAST,
               "ssl_backbone_body": SSLBackbone.SIM_CLR_DEEPER_LAST, "backbone_latent_dim_face": width,
               "id_latent_dim": id_dim, "use_linear": True, "start_id_net_with_relu": False,
               "l2_normalize_embeddings": True, "fusion_strategy": "sum", "use_trainable_padding_vectors": False,
               "pml_setup_v": 7, "ssl_ckpt_face": "/paper/ssl.ckpt"}
    path = _lightning_save(module, hparams, tmp_path / "paper_reid.ckpt", state_dict)
    return module.eval(), path


def _images(n: int, size: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


MASKS = {  # name -> (face_mask, body_mask) of 7 rows
    "faces only": ([True] * 7, [False] * 7),
    "bodies only": ([False] * 7, [True] * 7),
    "both": ([True] * 7, [True] * 7),
    "mixed": ([True, True, True, False, False, True, False], [True, False, True, True, True, False, True]),
}


def _assert_reid_parity(ours: nn.Module, paper: nn.Module, face_px: int = 32, body_px: int = 48) -> None:
    face, body = _images(7, face_px, 1), _images(7, body_px, 2)
    ours.eval()
    with torch.no_grad():
        for name, (fm, bm) in MASKS.items():
            fm, bm = torch.tensor(fm), torch.tensor(bm)
            expected, got = paper(face, body, fm, bm), ours(face, body, fm, bm)
            assert expected.shape == got.shape, name
            assert (expected - got).abs().max().item() < TOL, name
            assert torch.cdist(expected, expected).max() > 0.05, f"{name}: degenerate reference embeddings"


def test_reid_import_equals_the_papers_forward(tmp_path) -> None:
    paper, ckpt = paper_reid(tmp_path)
    report = import_paper_checkpoint(str(ckpt), str(tmp_path / "reid.pt"))
    assert report.kind == "reid" and report.model_config["arch"] == "resnet18"
    assert report.model_config["embed_dim"] == 256 and report.model_config["proj_hidden_dim"] is None
    assert report.duplicates_checked and all(k.startswith("backbone_body.") for k in report.duplicates_checked)
    assert f"{ENUM_MODULE}.SSLBackbone" in report.foreign_globals
    assert f"{DICT_MODULE}.AttributeDict" in report.foreign_globals
    assert report.hyper_parameters["foreign"] == f"{DICT_MODULE}.AttributeDict"
    assert report.lightning == {"epoch": 7, "global_step": 1234, "pytorch-lightning_version": "1.9.5"}
    assert ENUM_MODULE not in sys.modules and DICT_MODULE not in sys.modules  # nothing was imported
    model, config, extra = load_model_checkpoint(str(tmp_path / "reid.pt"), expected_kind="reid")
    assert isinstance(model, ReIDNet) and config.freeze_ssl
    assert config.transform == augment.paper_transform_spec(96, 128)
    assert extra["imported_from"]["sha256"] == report.source_sha256
    _assert_reid_parity(model, paper)


def test_ssl_import_equals_the_papers_forward_and_feeds_finetuning(tmp_path) -> None:
    paper, ckpt = paper_ssl(tmp_path)
    report = import_paper_checkpoint(str(ckpt), str(tmp_path / "ssl.pt"))
    assert report.kind == "ssl" and report.model_config["proj_dim"] == 128
    assert list(report.folded) == ["model.convnet.fc.0.bias"]
    model, _, _ = load_model_checkpoint(str(tmp_path / "ssl.pt"), expected_kind="ssl")
    assert isinstance(model, SSLNet)
    images = _images(6, 40, 3)
    model.eval()
    with torch.no_grad():
        assert (paper(images) - model(images)).abs().max().item() < TOL
        head = nn.Sequential(*list(paper.model.convnet.fc.children())[:6])
        trunk = copy.deepcopy(paper.model.convnet)
        trunk.fc = head
        assert (F.normalize(trunk(images)) - F.normalize(model.features(images))).abs().max().item() < TOL
    # what jobs/finetune.py --ssl-checkpoint does: the fine-tuned net inherits the paper's transform
    net = reid_net_from_ssl_checkpoint(str(tmp_path / "ssl.pt"), embed_dim=64)
    assert net.config.transform == augment.paper_transform_spec() and net.config.embed_dim == 64


@pytest.mark.slow
def test_resnet50_paper_shapes_equal_the_papers_forward(tmp_path) -> None:
    paper, ckpt = paper_reid(tmp_path, "resnet50", 2048, 128, 256)
    model, report = convert_paper_checkpoint(ckpt.read_bytes(), str(ckpt))
    assert report.model_config["arch"] == "resnet50" and model.config.feature_dim == 2048
    _assert_reid_parity(model, paper, 48, 64)
    ssl_paper, ssl_ckpt = paper_ssl(tmp_path, "resnet50", 2048, 128)
    ssl_model, _ = convert_paper_checkpoint(ssl_ckpt.read_bytes())
    images = _images(4, 48, 5)
    with torch.no_grad():
        assert (ssl_paper(images) - ssl_model(images)).abs().max().item() < TOL


def test_differing_backbone_copies_are_refused(tmp_path) -> None:
    paper, _ = paper_reid(tmp_path)
    state = {k: v.clone() for k, v in paper.state_dict().items()}
    state["backbone_body.convnet.layer2.0.bn1.running_var"] += 1e-3
    _, ckpt = paper_reid(tmp_path, state_dict=state)
    out = tmp_path / "out" / "reid.pt"
    with pytest.raises(CheckpointError, match=r"differ in 1 tensors \['layer2.0.bn1.running_var'\]"):
        import_paper_checkpoint(str(ckpt), str(out))
    assert not out.parent.exists() or not os.listdir(out.parent)  # nothing written


def test_missing_and_unexpected_keys_are_listed_and_nothing_is_written(tmp_path) -> None:
    paper, _ = paper_ssl(tmp_path)
    state = dict(paper.state_dict())
    del state["model.convnet.fc.3.weight"], state["model.convnet.layer4.1.bn2.running_var"]
    state["model.convnet.fc.9.weight"] = torch.zeros(3)
    torch.save({"state_dict": state}, tmp_path / "broken.ckpt")
    out = tmp_path / "ssl.pt"
    with pytest.raises(CheckpointError) as info:
        import_paper_checkpoint(str(tmp_path / "broken.ckpt"), str(out))
    message = str(info.value)
    assert "2 missing keys" in message and "model.convnet.fc.3.weight" in message
    assert "model.convnet.layer4.1.bn2.running_var" in message and "SimCLRFaceBodyAlignedLitModule" in message
    assert "1 unexpected keys ['model.convnet.fc.9.weight']" in message
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["broken.ckpt", "paper_ssl.ckpt"]
    # an extra tensor-free module's keys can be dropped explicitly
    state = {**paper.state_dict(), "val_acc_best.max_value": torch.tensor(0.5)}
    torch.save({"state_dict": state}, tmp_path / "extra.ckpt")
    with pytest.raises(CheckpointError, match="unexpected keys \\['val_acc_best.max_value'\\]"):
        convert_paper_checkpoint((tmp_path / "extra.ckpt").read_bytes())
    _, report = convert_paper_checkpoint((tmp_path / "extra.ckpt").read_bytes(), ignore_prefixes=("val_acc",))
    assert report.ignored == ["val_acc_best.max_value"]


class _RunsCommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _Evals:
    def __reduce__(self):
        return eval, ("__import__('os').system('touch EVAL_MARKER')",)


def test_a_malicious_pickle_runs_nothing_and_its_tensors_are_still_read(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "MARKER"
    paper, _ = paper_ssl(tmp_path)
    ckpt = {"state_dict": paper.state_dict(), "epoch": 1,
            "hyper_parameters": {"cmd": _RunsCommand(f"touch {marker}"), "e": _Evals(), "lst": [_Evals()]}}
    torch.save(ckpt, tmp_path / "evil.ckpt")
    model, report = convert_paper_checkpoint((tmp_path / "evil.ckpt").read_bytes(), "evil.ckpt")
    assert not marker.exists() and not (tmp_path / "EVAL_MARKER").exists()
    assert {f"{os.system.__module__}.system", "builtins.eval"} <= set(report.foreign_globals)
    assert report.hyper_parameters["cmd"]["args"] == [f"touch {marker}"]
    with torch.no_grad():  # the tensors were read all the same
        assert (paper(_images(2, 32, 0)) - model.eval()(_images(2, 32, 0))).abs().max().item() < TOL
    # the bare unpickler: a placeholder's REDUCE/BUILD/SETITEMS only record
    obj, foreign = safe_load((tmp_path / "evil.ckpt").read_bytes())
    stand_in = obj["hyper_parameters"]["cmd"]
    assert isinstance(stand_in, ForeignObject) and stand_in.args == (f"touch {marker}",) and foreign
    assert not marker.exists()


def test_kind_is_detected_and_a_wrong_kind_or_foreign_file_is_refused(tmp_path) -> None:
    _, ssl_ckpt = paper_ssl(tmp_path)
    _, reid_ckpt = paper_reid(tmp_path)
    assert convert_paper_checkpoint(ssl_ckpt.read_bytes())[1].kind == "ssl"
    assert convert_paper_checkpoint(reid_ckpt.read_bytes())[1].kind == "reid"
    with pytest.raises(CheckpointError, match="asked for kind 'ssl'.*'reid' module"):
        convert_paper_checkpoint(reid_ckpt.read_bytes(), kind="ssl")
    torch.save({"state_dict": {"encoder.weight": torch.zeros(2)}}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match=r"fit neither paper module.*encoder\.weight"):
        convert_paper_checkpoint((tmp_path / "other.ckpt").read_bytes())
    with pytest.raises(CheckpointError, match="not a torch.save zip"):
        convert_paper_checkpoint(b"not a checkpoint")


def test_cli_writes_a_checkpoint_every_job_loads_and_logs_an_mlflow_run(tmp_path, capsys) -> None:
    import mlflow

    _, ckpt = paper_reid(tmp_path)
    out = tmp_path / "models" / "paper_reid.pt"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)  # the default store: SQLite next to --out
    proc = subprocess.run([sys.executable, str(REPO / "jobs" / "import_checkpoint.py"), "--from", str(ckpt),
                           "--kind", "reid", "--out", str(out), "--name", "import-test"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"{ENUM_MODULE}.SSLBackbone" in proc.stdout
    model, config, _ = load_model_checkpoint(str(out), expected_kind="reid")
    assert config.transform["face"]["resize"] == "longest_pad"
    report = json.loads(Path(f"{out}.import.json").read_text())
    assert report["kind"] == "reid" and report["out"] == str(out)
    uri = f"sqlite:///{out.parent / 'mlflow.db'}"
    saved_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        runs = mlflow.search_runs(experiment_names=["comic-reid"], output_format="list",
                                  filter_string="tags.`reid.run_key` = 'import-test'")
    finally:
        mlflow.set_tracking_uri(saved_uri)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["reid.stage"] == "import"
    params = runs[0].data.params
    assert params["source_sha256"] == report["source_sha256"] and params["detected_kind"] == "reid"
    assert params["model_arch"] == "resnet18" and "SSLBackbone" in params["foreign_globals"]
    client = mlflow.MlflowClient(uri)
    assert {a.path for a in client.list_artifacts(runs[0].info.run_id)} == {"model", "paper_reid.pt.import.json"}
    assert [a.path for a in client.list_artifacts(runs[0].info.run_id, "model")] == ["model/paper_reid.pt"]
    # a failing import (the same entry point, in process): exit code 2, one clear line, nothing written
    spec = importlib.util.spec_from_file_location("import_job", REPO / "jobs" / "import_checkpoint.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    argv = ["--from", str(ckpt), "--kind", "ssl", "--out", str(tmp_path / "x.pt")]
    assert run_main(job.main, argv) == 2
    assert "asked for kind 'ssl'" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()


# -- the transform spec ---------------------------------------------------------------------------------------

def _crops(seed: int = 0) -> list[Image.Image]:
    gen = torch.Generator().manual_seed(seed)
    sizes = [(40, 30), (23, 50), (96, 96), (130, 70), (31, 31)]
    return [Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=gen, dtype=torch.uint8).numpy())
            for w, h in sizes]


def test_default_spec_is_todays_eval_transform_bit_for_bit() -> None:
    spec = augment.default_transform_spec(32, 48)
    assert ModelConfig(face_size=32, body_size=48).transform_spec == spec
    for kind, size in (("face", 32), ("body", 48)):
        for crop in _crops():
            assert torch.equal(augment.eval_transform_from_spec(spec, kind)(crop),
                               augment.eval_transform(size, kind)(crop))


def test_paper_spec_pads_the_longest_side_centred_with_zeros() -> None:
    spec = augment.paper_transform_spec(32, 48)
    crop = _crops()[1]  # 23 x 50 (w x h): longest side 50 -> 48, width 22
    out = augment.eval_transform_from_spec(spec, "body")(crop)
    assert out.shape == (3, 48, 48)
    left = (48 - 22) // 2
    assert torch.all(out[:, :, :left] == -1) and torch.all(out[:, :, left + 22:] == -1)  # zero pixels, normalised
    exact = Image.fromarray(torch.randint(0, 256, (32, 20, 3), dtype=torch.uint8).numpy())  # no resize needed
    face = augment.eval_transform_from_spec(spec, "face")(exact)
    expected = torch.zeros(3, 32, 32)
    expected[:, :, 6:26] = torch.from_numpy(np.array(exact)).permute(2, 0, 1) / 255.0
    assert torch.allclose(face, (expected - 0.5) / 0.5, atol=1e-6)


def test_bad_transform_specs_are_refused() -> None:
    with pytest.raises(ConfigError, match="resize"):
        ModelConfig(transform={**augment.paper_transform_spec(), "face": {"size": 96, "resize": "crop"}})
    with pytest.raises(ConfigError, match="face_size/body_size"):
        ModelConfig(face_size=64, transform=augment.paper_transform_spec())
    with pytest.raises(ConfigError, match="unknown keys"):
        ModelConfig(transform={**augment.paper_transform_spec(), "hflip": True})


def test_labeling_embeds_with_the_models_recorded_transform(tmp_path) -> None:
    paper, ckpt = paper_reid(tmp_path)
    model, report = convert_paper_checkpoint(ckpt.read_bytes(), face_size=32, body_size=48)
    spec = model.config.transform
    pre = CharacterEmbedder(model, "cpu").preprocess
    crops = _crops()
    for kind in ("face", "body"):
        tf = augment.eval_transform_from_spec(spec, kind)
        arrays = CropPreprocessor(32, 48, spec)(crops if kind == "face" else [None] * 5,
                                                crops if kind == "body" else [None] * 5)[kind]
        batch = pre.normalize(torch.from_numpy(arrays), kind)
        assert torch.equal(batch, torch.stack([tf(c) for c in crops]))
    faces, bodies = [crops[0], None, crops[2], crops[4]], [crops[3], crops[1], None, crops[0]]
    got = torch.from_numpy(CharacterEmbedder(model, "cpu")(faces, bodies))
    face_tf, body_tf = (augment.eval_transform_from_spec(spec, k) for k in ("face", "body"))
    face = torch.stack([face_tf(c) if c is not None else torch.zeros(3, 32, 32) for c in faces])
    body = torch.stack([body_tf(c) if c is not None else torch.zeros(3, 48, 48) for c in bodies])
    with torch.no_grad():
        expected = paper(face, body, torch.tensor([c is not None for c in faces]),
                         torch.tensor([c is not None for c in bodies]))
    assert (got - expected).abs().max().item() < TOL
    with pytest.raises(ValueError, match="sizes"):
        CropPreprocessor(96, 128, spec)


def _rezip(src: Path, dst: Path, replace: dict[str, bytes]) -> None:
    """``src`` (a torch.save zip) with some records replaced, deflated (a small file that inflates to a lot)."""
    import zipfile

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            name = info.filename.split("/", 1)[1]
            zout.writestr(info.filename, replace.get(name, zin.read(info)))


def test_absurd_tensor_shapes_and_inflating_records_are_refused_before_reading(tmp_path, monkeypatch) -> None:
    """A crafted file cannot make the importer allocate: a 1-element storage viewed as 1e12 elements (stride 0), a
    record that inflates to 64 MiB behind a tensor of 4 elements (never inflated: its size is in the zip's
    directory), or a storage of more elements than any Re-ID net has, each a CheckpointError naming the cause."""
    import zipfile

    from reid.core.models import safe_pickle

    view = torch.zeros(1).as_strided((10**6, 10**6), (0, 0))
    torch.save({"state_dict": {"w": view}}, tmp_path / "view.ckpt")
    with pytest.raises(CheckpointError, match=r"tensor of shape \[1000000, 1000000\] \(1000000000000 elements\): "
                                              r"more than 268435456"):
        safe_load((tmp_path / "view.ckpt").read_bytes(), "view.ckpt")
    torch.save({"state_dict": {"w": torch.zeros(4)}}, tmp_path / "small.ckpt")
    _rezip(tmp_path / "small.ckpt", tmp_path / "bomb.ckpt", {"data/0": bytes(64 << 20)})
    assert (tmp_path / "bomb.ckpt").stat().st_size < 1 << 20
    opened: list[str] = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, name, *a, **k: (
        opened.append(getattr(name, "filename", name)), real_open(self, name, *a, **k))[1])
    with pytest.raises(CheckpointError, match=r"storage data/0: 67108864 bytes, expected 16"):
        safe_load((tmp_path / "bomb.ckpt").read_bytes(), "bomb.ckpt")
    assert not [n for n in opened if n.endswith("/data/0")]  # refused from the zip directory, never inflated
    monkeypatch.setattr(safe_pickle, "MAX_TENSOR_ELEMENTS", 3)
    with pytest.raises(CheckpointError, match=r"storage data/0 of 4 elements: more than 3"):
        safe_load((tmp_path / "small.ckpt").read_bytes(), "small.ckpt")
    monkeypatch.setattr(safe_pickle, "MAX_TOTAL_BYTES", 15)
    with pytest.raises(CheckpointError, match=r"small.ckpt: its tensors would take 16 bytes once unpacked"):
        safe_load((tmp_path / "small.ckpt").read_bytes(), "small.ckpt")
