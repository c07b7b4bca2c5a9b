"""Pretrain and fine-tune as 2-worker DDP (gloo) Ray Train runs on a tiny corpus: learning, resume, faults."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import ray
import torch

from reid.core.config import replace
from reid.core.contracts.crops import read_crops
from reid.core.errors import CheckpointError, ConfigError
from reid.core.models.checkpoint import load_model_checkpoint
from reid.core.models.export import example_inputs
from reid.runtime.registry import resolve_model_uri
from reid.stages.train.finetune import FinetuneConfig, run_finetune
from reid.stages.train.pretrain import PretrainConfig, run_pretrain

pytestmark = [pytest.mark.ray, pytest.mark.slow]
TINY = {"arch": "slim_resnet10", "face_size": 32, "body_size": 48, "batch_size": 16, "workers": 2,
        "cpus_per_worker": 0.5, "data_cpus": 0.25}


def _history(uri: str, run_key: str, metric: str) -> list[tuple[int, float]]:
    client = mlflow.tracking.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("comic-reid").experiment_id],
                                filter_string=f"tags.`reid.run_key` = '{run_key}'")
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, metric))


@pytest.fixture(scope="module")
def pretrain_cfg(tiny_crops, tmp_path_factory, mlflow_uri) -> PretrainConfig:
    return PretrainConfig(crops=str(tiny_crops), storage=str(tmp_path_factory.mktemp("train")), name="pt",
                          epochs=4, lr=1e-3, mlflow_uri=mlflow_uri, **TINY)


@pytest.fixture(scope="module")
def pretrained(pretrain_cfg, ray_session):
    """The module's pretraining run, which also carries the worker-death fault: rank 0 dies once mid-epoch 1
    (``fault_epoch``) and Ray Train restarts the worker group from epoch 0's checkpoint (one run, not two)."""
    return run_pretrain(replace(pretrain_cfg, fault_epoch=1, max_failures=1))


def test_pretrain_step_overfits_one_batch():
    """The exact per-step code of the DDP loop (views split, one forward for faces and bodies, the three-term
    loss, AdamW, grad clip), without Ray: on one fixed batch the loss must fall well below its start."""
    from reid.core.losses import IdentityAwareSSLLoss
    from reid.core.models import SSLNet
    from reid.stages.train.pretrain import FaceBodyEmbedder, _split_views

    torch.manual_seed(0)
    cfg = PretrainConfig(**{**TINY, "batch_size": 8})
    n = 8
    batch = {f"{m}_{v}": torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8)
             for m, size in (("face", 32), ("body", 48)) for v in ("a", "b", "weak")}
    batch["has_face"] = torch.tensor([True] * 7 + [False])
    batch["has_body"] = torch.tensor([False] + [True] * 7)
    net = FaceBodyEmbedder(SSLNet(cfg.model_config()))
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    loss_fn = IdentityAwareSSLLoss(cfg.temperature)
    losses = []
    for _ in range(25):
        faces, bodies, nf, nb, npair = _split_views(batch, cfg, torch.device("cpu"))
        z_face, z_body = net(faces, bodies)
        total, terms = loss_fn(z_face[:nf], z_face[nf:2 * nf], z_body[:nb], z_body[nb:2 * nb], z_face[2 * nf:],
                               z_body[2 * nb:])
        optimizer.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        optimizer.step()
        losses.append(total.item())
    assert (nf, nb, npair) == (7, 7, 6)
    assert losses[-1] < 0.5 * losses[0], losses


def test_pretrain_ddp_runs_and_logs(pretrained, pretrain_cfg, mlflow_uri):
    from reid.core.models import SSLNet

    result, model_path = pretrained
    losses = _history(mlflow_uri, "pt", "loss")
    assert [step for step, _ in losses] == [0, 1, 2, 3]  # each epoch once, although rank 0 died in epoch 1
    assert all(np.isfinite(v) for _, v in losses)
    assert all(k in result.metrics for k in ("face", "body", "identity", "samples_per_s", "val_face_body_p1"))
    if result.metrics["batches"] > 1:  # throughput after the epoch's first step (Ray Data's start-up)
        assert result.metrics["steady_samples_per_s"] > 0
    else:
        assert "steady_samples_per_s" not in result.metrics
    model, cfg, extra = load_model_checkpoint(model_path, expected_kind="ssl")
    assert cfg.arch == "slim_resnet10" and extra["epoch"] == 3
    # the tiny corpus is coloured: its colours were kept, and the checkpoint says why
    assert extra["augmentation"]["corpus_colour"] == "colour" and extra["augmentation"]["mean_saturation"] > 0.2
    assert (extra["augmentation"]["hue"], extra["augmentation"]["grayscale"]) == (0.0, 0.0)
    assert extra["augmentation"]["source"] == "measured corpus"
    torch.manual_seed(pretrain_cfg.seed)  # rank 0's initial weights, which DDP broadcasts to rank 1
    initial = SSLNet(pretrain_cfg.model_config()).state_dict()
    trained = model.state_dict()
    assert all(torch.equal(initial[k], trained[k]) is False for k in trained if k.endswith("weight"))


@pytest.mark.fault
def test_worker_death_restarts_from_checkpoint(pretrained, pretrain_cfg, mlflow_uri):
    """The fixture's run: rank 0 died mid-epoch 1; the restarted worker group resumed at epoch 1 from epoch 0's
    checkpoint and finished (its last epoch is 3)."""
    result, _ = pretrained
    assert result.metrics["epoch"] == 3
    assert Path(pretrain_cfg.storage, "pt", "_fault_injected_epoch1").exists()
    client = mlflow.tracking.MlflowClient(mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("comic-reid").experiment_id],
                                filter_string="tags.`reid.run_key` = 'pt'")
    assert run.data.tags["reid.resumed_at_epoch"] == "1"


def test_changed_architecture_refuses_to_resume_at_once(pretrained, pretrain_cfg):
    """The worker's CheckpointError is not retried (max_failures=3 would restart the worker group three times)
    and reaches the driver as itself. Had Ray Train retried it, fit would raise its own WorkerGroupError after
    the fourth attempt: only the non-retry path (reid.stages.train.failures) re-raises the worker's CheckpointError."""
    with pytest.raises(CheckpointError, match="cannot resume"):
        run_pretrain(replace(pretrain_cfg, epochs=6, proj_dim=64, max_failures=3))


def test_resume_skips_a_truncated_newest_checkpoint_and_keeps_optimizer_state(pretrained, pretrain_cfg, mlflow_uri):
    """A disk that filled up while the newest checkpoint was written: the re-run with more epochs skips it, says
    so, goes on from the one before with its optimizer state, and logs each epoch once."""
    run = Path(pretrain_cfg.storage, "pt")
    newest, older = sorted((p for p in run.glob("checkpoint_*") if p.is_dir()), reverse=True)[:2]
    older_epoch = torch.load(older / "state.pt", weights_only=True)["epoch"]
    state = newest / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 3])
    result, _ = run_pretrain(replace(pretrain_cfg, epochs=5))
    assert result.metrics["epoch"] == 4
    with result.checkpoint.as_directory() as folder:
        state = torch.load(os.path.join(folder, "state.pt"), weights_only=True)
    steps_per_epoch = state["global_step"] // 5
    assert state["epoch"] == 4 and steps_per_epoch >= 1
    adam_steps = {int(s["step"]) for s in state["optimizer"]["state"].values()}
    assert adam_steps == {state["global_step"]}  # optimizer state carried over from the valid checkpoint
    client = mlflow.tracking.MlflowClient(mlflow_uri)
    (mlrun,) = client.search_runs([client.get_experiment_by_name("comic-reid").experiment_id],
                                  filter_string="tags.`reid.run_key` = 'pt'")
    assert mlrun.data.tags["reid.resume_skipped"].endswith(newest.name)
    assert mlrun.data.tags["reid.resumed_at_epoch"] == str(older_epoch + 1)  # after the valid checkpoint
    assert [step for step, _ in _history(mlflow_uri, "pt", "loss")] == [0, 1, 2, 3, 4]  # each epoch once


def test_finetune_ddp_evaluates_exports_and_logs(pretrained, pretrain_cfg, tiny_corpus, mlflow_uri, tmp_path):
    """Fine-tuning from the SSL model *as MLflow logged it* (a runs:/ URI), then everything a user of MLflow
    looks for: the registered model (pytorch flavour + our checkpoint), the embedding pyfunc, the plots."""
    _, ssl_model = pretrained
    client = mlflow.tracking.MlflowClient(mlflow_uri)
    (pt_run,) = client.search_runs([client.get_experiment_by_name("comic-reid").experiment_id],
                                   filter_string="tags.`reid.run_key` = 'pt'")
    ssl_uri = pt_run.data.tags["reid.ssl_model_uri"]
    assert ssl_uri.startswith("runs:/") and ssl_uri.endswith("/ssl_model/model.pt")
    assert {a.path for a in client.list_artifacts(pt_run.info.run_id, "plots")} == {"plots/curves.png"}
    cfg = FinetuneConfig(crops=pretrain_cfg.crops, sequences=str(tiny_corpus / "data/comics_seq"),
                         ssl_checkpoint=ssl_uri, storage=pretrain_cfg.storage, name="ft", face_size=32,
                         body_size=48, epochs=2, sequences_per_batch=4, workers=2, cpus_per_worker=0.5,
                         data_cpus=0.25, mlflow_uri=mlflow_uri, system_metrics_s=1)
    out = run_finetune(cfg)
    assert 0.0 <= out["test"]["test_mean_average_precision_at_r"] <= 1.0
    assert [s for s, _ in _history(mlflow_uri, "ft", "val_mean_average_precision_at_r")] == [0, 1]
    assert _history(mlflow_uri, "ft", "test_precision_at_1")
    model, model_cfg, extra = load_model_checkpoint(out["best_model"], expected_kind="reid")
    assert model_cfg.embed_dim == 256 and model_cfg.flip_average  # the default: crop and mirror averaged
    # the assigner's thresholds were calibrated on the validation sequences and recorded with the model
    calibration = extra["calibration"]
    assert calibration == out["calibration"] and "validation sequences" in calibration["source"]
    assert 0 < calibration["threshold"] <= 1.9 and 0 < calibration["link_threshold"] <= 1.9
    assert _history(mlflow_uri, "ft", "calibration_threshold")
    scripted = torch.jit.load(out["exported"])
    inputs = example_inputs(model, 3)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(scripted(*inputs), model(*inputs), atol=1e-4)
    # registered: models:/comic-reid/N resolves to this very checkpoint; the pyfunc embeds image bytes
    assert out["registered_model_uri"] == f"models:/comic-reid/{out['model_version']}"
    path, provenance = resolve_model_uri(out["registered_model_uri"], mlflow_uri, str(tmp_path / "dl"))
    assert Path(path).read_bytes() == Path(out["best_model"]).read_bytes()
    assert provenance["registered_model"] == "comic-reid" and provenance["model_version"] == out["model_version"]
    mlflow.set_tracking_uri(mlflow_uri)
    embedder = mlflow.pyfunc.load_model(out["embedder_uri"])
    crops = read_crops(pretrain_cfg.crops, ["type", "image"]).to_pylist()
    face = next(c["image"] for c in crops if c["type"] == "face")
    body = next(c["image"] for c in crops if c["type"] == "body")
    embeddings = embedder.predict(pd.DataFrame({"face": [face, None], "body": [body, body]}))
    assert embeddings.shape == (2, 256) and np.allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-5)
    run_id = client.get_model_version("comic-reid", out["model_version"]).run_id
    plots = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert plots == {"plots/curves.png", "plots/val_distances.png"}
    assert (Path(cfg.storage) / "ft" / "progress.json").exists()  # what the driver's bar was drawn from
    # MLflow 3: the data it read as inputs, the host's system metrics, the model's own metrics linked to it
    run = client.get_run(run_id)
    assert {(i.dataset.name, t.value) for i in run.inputs.dataset_inputs for t in i.tags} == {
        ("crops", "training"), ("train_sequences", "training"), ("validation_sequences", "validation"),
        ("test_sequences", "testing")}
    assert "system/cpu_utilization_percentage" in run.data.metrics
    linked = {m.key: (m.value, m.dataset_name) for m in client.get_logged_model(out["model_id"]).metrics
              if m.dataset_name}
    last_epoch = _history(mlflow_uri, "ft", "val_mean_average_precision_at_r")[-1][1]
    assert linked["final_val_mean_average_precision_at_r"] == (pytest.approx(last_epoch, abs=1e-6),
                                                                "validation_sequences")  # --select last
    assert linked["test_precision_at_1"] == (pytest.approx(out["test"]["test_precision_at_1"]), "test_sequences")
    assert run.data.tags["reid.champion_decision"] == out["champion_decision"] in ("promoted", "kept")
    champion = client.get_model_version_by_alias("comic-reid", "champion")
    assert (str(champion.version) == out["model_version"]) == (out["champion_decision"] == "promoted")


def test_the_paper_recipe_loads_and_runs(pretrained, pretrain_cfg, tiny_corpus, mlflow_uri):
    """jobs/configs/paper_*.yaml: SimCLR colour augmentations; frozen SSL network, best validation model."""
    from reid.core.config import parse_config
    from reid.stages.pipeline import REPO

    pre = parse_config(PretrainConfig, ["--config", str(REPO / "jobs/configs/paper_pretrain.yaml")])
    # the product leaves them to the corpus (reid.core.data.augment.colour_augmentation); the paper fixes them
    assert (pre.hue, pre.grayscale) == (0.1, 0.2) and (PretrainConfig().hue, PretrainConfig().grayscale) == (None,
                                                                                                          None)
    _, ssl_model = pretrained
    cfg = parse_config(FinetuneConfig, [
        "--config", str(REPO / "jobs/configs/paper_finetune.yaml"), "--crops", pretrain_cfg.crops,
        "--sequences", str(tiny_corpus / "data/comics_seq"), "--ssl-checkpoint", ssl_model,
        "--storage", pretrain_cfg.storage, "--name", "ft-paper", "--face-size", "32", "--body-size", "48",
        "--epochs", "1", "--sequences-per-batch", "4", "--workers", "2", "--cpus-per-worker", "0.5",
        "--data-cpus", "0.25", "--mlflow-uri", mlflow_uri])
    assert cfg.freeze_ssl and cfg.select == "best" and cfg.lr == 7.5e-4 and not cfg.flip_average
    out = run_finetune(cfg)
    model, model_cfg, _ = load_model_checkpoint(out["best_model"], expected_kind="reid")
    assert not model_cfg.flip_average
    ssl, _, _ = load_model_checkpoint(ssl_model, expected_kind="ssl")
    frozen = {k: v for k, v in ssl.state_dict().items() if k.startswith(("backbone.", "trunk."))}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in frozen.items())  # only the Linear trained


def test_finetune_fails_fast_on_bad_inputs(tiny_crops, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        run_finetune(FinetuneConfig(crops=str(tiny_crops), ssl_checkpoint=str(tmp_path / "missing.pt")))
    with pytest.raises(ConfigError, match="neg_margin > pos_margin"):
        FinetuneConfig(pos_margin=1.0, neg_margin=0.5)
    with pytest.raises(ConfigError, match="batch_size 2 too small"):
        PretrainConfig(batch_size=2, workers=2)
    with pytest.raises(ConfigError, match="sync_bn needs --gpu"):  # DDP would refuse it only inside the workers
        PretrainConfig(sync_bn=True)


def test_training_flops_per_sample_counts_every_view_and_the_backward() -> None:
    # A model whose forward FLOPs are known: Linear(16 -> 8) on each of 3 "views" of 4 samples. The forward of
    # one view costs 2 * 16 * 8 FLOPs, a sample has 3 views, and training costs 3 forwards.
    import torch
    from torch import nn

    from reid.stages.train.flops import train_flops_per_sample

    class ThreeViews(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(16, 8, bias=False)

        def forward(self, views: torch.Tensor) -> torch.Tensor:
            return self.fc(views)

    views = torch.randn(3 * 4, 16)  # 3 views of 4 samples, stacked as the pretraining step stacks them
    assert train_flops_per_sample(ThreeViews(), (views,), samples=4) == 3 * 3 * 2 * 16 * 8
    with pytest.raises(ValueError):
        train_flops_per_sample(ThreeViews(), (views,), samples=0)


def test_training_rows_are_read_in_a_seeded_order_that_mixes_series(tiny_crops, tiny_corpus, monkeypatch):
    """The sequences file and the crop shards list one series after another; read in that order, a training
    batch held one series only (no other-series negatives for the sequence loss, the same few characters many
    times over in an NT-Xent batch). With a seed, the order is random, the same for the same seed."""
    from reid.core.contracts.crops import committed_crop_files
    from reid.core.data import formats
    from reid.runtime.ray_datasets import character_instances, sequence_dataset

    train = formats.read_split(str(tiny_corpus / "data/comics_seq"), "train")
    options = ray.data.DataContext.get_current().execution_options
    monkeypatch.setattr(options, "preserve_order", True)  # take_all() in the datasets' own order

    def series_order(seed):
        rows = sequence_dataset(str(tiny_crops), train, 32, 48, False, 0.25, seed=seed).take_all()
        return [int(r["series_id"]) for r in rows]

    in_file = [s.series_id for s in train if s.characters]
    assert series_order(None) == in_file and in_file == sorted(in_file)  # the file's order: grouped by series
    shuffled = series_order(0)
    assert sorted(shuffled) == sorted(in_file) and shuffled != in_file
    assert series_order(0) == shuffled and series_order(1) != shuffled
    assert len(committed_crop_files(str(tiny_crops))) > 1
    keys = [r["key"] for r in character_instances(str(tiny_crops), seed=0).take_all()]
    in_files = [r["key"] for r in character_instances(str(tiny_crops)).take_all()]
    assert sorted(keys) == sorted(in_files) and keys != in_files
