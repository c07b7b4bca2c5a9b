"""Stage 1: identity-aware self-supervised pretraining on Ray Train (DDP over N workers).

Loss = NT-Xent(face views) + NT-Xent(body views) + NT-Xent(weak face ↔ weak body of one instance),
negatives gathered across workers. Re-running with the same ``name`` and ``storage`` resumes from the
latest checkpoint (the interrupted epoch restarts; Ray Data does not restore a mid-epoch position).
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reid.core import config, console, io
from reid.core.embedding import normalize_uint8
from reid.core.errors import ConfigError
from reid.core.models import ModelConfig, SSLNet
from reid.core.models.backbone import SSL_FIELDS
from reid.runtime import faults
from reid.runtime.ray_datasets import is_validation_key
from reid.stages.train.checkpointing import publish_model
from reid.stages.train.device import Runtime, autocast, prepare_for_device, unwrap
from reid.stages.train.flops import peak_flops, train_flops_per_sample
from reid.stages.train.loop import Parts, Run, check_finite, end_epoch, start_run
from reid.stages.train.ray_config import data_config, run_dir, scaling_config, spool_dir, trainer_run_config
from reid.stages.train.schedule import cosine_lambda
from reid.stages.train.tracked import SYSTEM_METRICS_HELP, fit_tracked, open_run

log = logging.getLogger(__name__)
ARCHITECTURE_KEYS = SSL_FIELDS


@dataclass(frozen=True)
class PretrainConfig:
    """Identity-aware SSL pretraining (the paper's defaults) as a Ray Train TorchTrainer."""

    crops: str = field(default="runs/demo/crops", metadata={"help": "output folder of jobs/crop.py"})
    storage: str = field(default="runs/train", metadata={"help": "Ray Train storage path (checkpoints)"})
    name: str = field(default="pretrain", metadata={"help": "run name: same name and storage = resume, in "
                                                                 "the same MLflow run; the MLflow run's name"})
    arch: str = field(default="resnet50", metadata={"help": "backbone: resnet50 (the paper), resnet34, resnet18, "
                                                            "or slim_resnet10 (~0.3 M parameters: tests, smoke runs)"})
    face_size: int = field(default=96, metadata={"help": "face crop side, px"})
    body_size: int = field(default=128, metadata={"help": "body crop side (longer side, padded square), px"})
    proj_hidden_dim: int | None = None
    proj_dim: int = 128
    backbone_weights: str | None = field(default=None, metadata={"help": "local torchvision state dict"})
    epochs: int = field(default=100, metadata={"help": "passes over the corpus"})
    batch_size: int = field(default=320, metadata={"help": "global batch (split over workers)"})
    shuffle_buffer: int = field(default=1024, metadata={"help": "instances each worker holds for its local "
                                                                "shuffle (shard files are also read in a seeded "
                                                                "random order): batches mix series and pages"})
    lr: float = field(default=5e-4, metadata={"help": "AdamW learning rate (cosine schedule)"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    warmup_epochs: int = field(default=0, metadata={"help": "linear warm-up, epochs"})
    temperature: float = field(default=0.07, metadata={"help": "NT-Xent temperature"})
    hue: float | None = field(default=None, metadata={
        "help": "hue jitter of the strong views (the paper: 0.1); default: chosen from the corpus's measured "
                "saturation (0 on a coloured corpus, where colour carries identity; 0.1 on a black-and-white one)"})
    grayscale: float | None = field(default=None, metadata={
        "help": "probability of a grayscale strong view (the paper: 0.2); default: chosen from the corpus as "
                "--hue is (0 or 0.2)"})
    face_weight: float = 1.0
    body_weight: float = 1.0
    identity_weight: float = field(default=1.0, metadata={"help": "weight of the face<->body term (0 = off)"})
    use_faces: bool = field(default=True, metadata={"help": "train on face crops (ablations)"})
    use_bodies: bool = field(default=True, metadata={"help": "train on body crops (ablations)"})
    grad_clip: float = field(default=0.5, metadata={"help": "gradient norm clip"})
    workers: int = field(default=2, metadata={"help": "Ray Train workers (DDP processes)"})
    gpu: bool = False
    cpus_per_worker: float = field(default=1.0, metadata={"help": "Ray CPUs per train worker"})
    data_cpus: float = field(default=0.5, metadata={"help": "CPUs per Ray Data decode/augment actor"})
    bf16: bool = field(default=True, metadata={"help": "bf16 autocast on GPU"})
    channels_last: bool = True
    sync_bn: bool = field(default=False, metadata={"help": "SyncBatchNorm across workers (GPU only: torch's "
                                                        "SyncBatchNorm has no CPU kernel)"})
    compile: bool = False
    max_failures: int = field(default=2, metadata={"help": "worker-group restarts (FailureConfig)"})
    seed: int = 0
    ray_address: str | None = None
    ray_num_cpus: int | None = None
    mlflow_uri: str | None = None
    experiment: str = "comic-reid"
    system_metrics_s: float = field(default=10.0, metadata={"help": SYSTEM_METRICS_HELP})
    fault_epoch: int = field(default=-1, metadata={"help": "fault injection for tests: rank 0 dies once "
                                                           "at this epoch"})

    def __post_init__(self) -> None:
        config.check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        config.check(self.batch_size >= 2 * self.workers,
                     f"batch_size {self.batch_size} too small for {self.workers} workers")
        config.check(self.lr > 0 and self.temperature > 0, "lr and temperature must be > 0")
        config.check(self.shuffle_buffer >= 1, f"shuffle_buffer must be >= 1, got {self.shuffle_buffer}")
        config.check((self.hue is None or 0 <= self.hue <= 0.5) and (self.grayscale is None or 0 <= self.grayscale <= 1),
                     f"need 0 <= hue <= 0.5 and 0 <= grayscale <= 1, got {self.hue}, {self.grayscale}")
        config.check(self.gpu or not self.sync_bn, "sync_bn needs --gpu: torch's SyncBatchNorm runs on CUDA only")
        config.check(self.use_faces or self.use_bodies, "use_faces and use_bodies cannot both be off")
        config.check(min(self.face_weight, self.body_weight, self.identity_weight) >= 0, "weights must be >= 0")
        self.model_config()  # validates arch and sizes

    def model_config(self) -> ModelConfig:
        return ModelConfig(arch=self.arch, face_size=self.face_size, body_size=self.body_size,
                           proj_hidden_dim=self.proj_hidden_dim, proj_dim=self.proj_dim,
                           backbone_weights=self.backbone_weights)


class FaceBodyEmbedder(nn.Module):
    """One forward for both modalities, so DDP sees one forward per backward."""

    def __init__(self, ssl_net: SSLNet) -> None:
        super().__init__()
        self.ssl = ssl_net

    def forward(self, faces: torch.Tensor, bodies: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z_face = self.ssl(faces) if faces.shape[0] else faces.new_zeros((0, self.ssl.config.proj_dim))
        z_body = self.ssl(bodies) if bodies.shape[0] else bodies.new_zeros((0, self.ssl.config.proj_dim))
        return z_face, z_body


def _split_views(batch: dict[str, torch.Tensor], cfg: PretrainConfig, device: torch.device):
    """Present faces' (a, b, weak) and bodies' (a, b, weak) stacked for one forward each."""
    has_face = batch["has_face"].bool() & cfg.use_faces
    has_body = batch["has_body"].bool() & cfg.use_bodies
    pair = has_face & has_body
    faces = torch.cat([batch["face_a"][has_face], batch["face_b"][has_face], batch["face_weak"][pair]])
    bodies = torch.cat([batch["body_a"][has_body], batch["body_b"][has_body], batch["body_weak"][pair]])
    return (normalize_uint8(faces.to(device)), normalize_uint8(bodies.to(device)),
            int(has_face.sum()), int(has_body.sum()), int(pair.sum()))


def pretrain_loop(loop_config: dict[str, Any]) -> None:
    """Ray Train worker function (ordinary PyTorch plus report/get_checkpoint/get_dataset_shard)."""
    import ray
    import ray.train

    from reid.core.losses import IdentityAwareSSLLoss

    cfg = config.from_dict(PretrainConfig, loop_config["cfg"])
    steps_per_epoch = max(1, loop_config["train_instances"] // cfg.batch_size)
    run = start_run(cfg, loop_config, "pretrain", build=lambda: _build(cfg, steps_per_epoch),
                    prepare=lambda model, rt: _prepare(cfg, model, rt), architecture_keys=ARCHITECTURE_KEYS,
                    params={**loop_config["cfg"], "train_instances": loop_config["train_instances"]},
                    steps_per_epoch=steps_per_epoch)
    if run.tracker and run.resumed:
        run.tracker.log_metrics({"restart_epoch": float(run.start_epoch)}, step=int(time.time()))
    loss_fn = IdentityAwareSSLLoss(cfg.temperature, cfg.face_weight if cfg.use_faces else 0.0,
                                   cfg.body_weight if cfg.use_bodies else 0.0,
                                   cfg.identity_weight if cfg.use_faces and cfg.use_bodies else 0.0,
                                   gather_distributed=run.rt.world_size > 1)
    # held-out pairs: on rank 0 only (the other workers get just the object ref in their config)
    val = ray.get(loop_config["val"]) if run.rt.rank == 0 and loop_config["val"] is not None else None
    train_shard = ray.train.get_dataset_shard("train")
    flops: dict[str, float] = {}
    for epoch in range(run.start_epoch, cfg.epochs):
        metrics = train_one_epoch(run, cfg, train_shard, loss_fn, epoch, flops)
        metrics.update(validate(run, cfg, val))
        end_epoch(run, metrics, epoch)
    run.close()


def _build(cfg: PretrainConfig, steps_per_epoch: int) -> Parts:
    model = SSLNet(cfg.model_config())
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_lambda(
        cfg.epochs * steps_per_epoch, cfg.warmup_epochs * steps_per_epoch))
    return model, optimizer, scheduler


def _prepare(cfg: PretrainConfig, model: SSLNet, rt: Runtime) -> nn.Module:
    return prepare_for_device(FaceBodyEmbedder(model), rt.device, cfg.channels_last, cfg.sync_bn, rt.world_size,
                              cfg.compile)


def train_one_epoch(run: Run, cfg: PretrainConfig, shard: Any, loss_fn: nn.Module, epoch: int,
                    flops: dict[str, float]) -> dict[str, float]:
    """One pass over this worker's shard: the loss terms averaged over its steps, throughput, LR, and (GPU) the
    MFU. ``flops["per_sample"]`` is measured on the first step with faces and bodies, once per run."""
    run.net.train()
    per_worker = cfg.batch_size // run.rt.world_size
    sums, samples, batches, start = {"loss": 0.0, "face": 0.0, "body": 0.0, "identity": 0.0}, 0, 0, time.time()
    first_step_end, first_samples = start, 0
    for batch in shard.iter_torch_batches(batch_size=per_worker, drop_last=True, device="cpu",
                                          local_shuffle_buffer_size=max(per_worker, cfg.shuffle_buffer),
                                          local_shuffle_seed=cfg.seed * 1000 + epoch):
        total, terms = _train_step(run, cfg, batch, loss_fn, epoch, flops)
        batches += 1
        if batches == 1:  # mid-epoch, as a real failure would be
            faults.worker_exit_once(cfg.fault_epoch, epoch, run.folder, run.rt.rank)
        samples += batch["has_face"].shape[0]
        if batches == 1:  # steady-state rate: from the end of the epoch's first step (Ray Data's start-up)
            first_step_end, first_samples = time.time(), samples
        sums["loss"] += total.item()
        for k, v in terms.items():
            sums[k] += float(v.item())
        run.progress.update(epoch, batches, sums["loss"] / batches,
                            samples * run.rt.world_size / max(time.time() - start, 1e-9))
    end = time.time()
    elapsed = end - start
    metrics = {k: v / max(1, batches) for k, v in sums.items()}
    metrics.update(epoch=epoch, samples_per_s=samples * run.rt.world_size / max(elapsed, 1e-9),
                   lr=run.scheduler.get_last_lr()[0], batches=batches)
    if batches > 1:
        metrics["steady_samples_per_s"] = ((samples - first_samples) * run.rt.world_size
                                           / max(end - first_step_end, 1e-9))
    if flops and peak_flops(run.rt.device):
        metrics["mfu"] = flops["per_sample"] * samples / elapsed / peak_flops(run.rt.device)
    return metrics


def _train_step(run: Run, cfg: PretrainConfig, batch: dict[str, torch.Tensor], loss_fn: nn.Module, epoch: int,
                flops: dict[str, float]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimizer step on a batch of instances → (total loss, its terms)."""
    faces, bodies, nf, nb, _ = _split_views(batch, cfg, run.rt.device)
    if not flops and run.rt.device.type == "cuda" and nf and nb:
        flops["per_sample"] = train_flops_per_sample(unwrap(run.net), (faces, bodies),
                                                     samples=batch["has_face"].shape[0])
    with autocast(run.rt.device, cfg.bf16):
        z_face, z_body = run.net(faces, bodies)
    z_face, z_body = z_face.float(), z_body.float()
    total, terms = loss_fn(z_face[:nf], z_face[nf:2 * nf], z_body[:nb], z_body[nb:2 * nb],
                           z_face[2 * nf:], z_body[2 * nb:])
    check_finite(total, epoch, run.step)
    run.optimizer.zero_grad(set_to_none=True)
    total.backward()
    torch.nn.utils.clip_grad_norm_(run.net.parameters(), cfg.grad_clip)
    run.optimizer.step()
    run.scheduler.step()
    run.step += 1
    return total, terms


def validate(run: Run, cfg: PretrainConfig, val: dict[str, np.ndarray] | None) -> dict[str, float]:
    """Rank 0: face-body precision@1 on the held-out pairs ``val``; NaN elsewhere and without held-out pairs
    (every report carries it: Tune searches on it)."""
    if run.rt.rank != 0 or val is None:
        return {"val_face_body_p1": float("nan")}
    return {"val_face_body_p1": face_body_precision_at_1(run.model, val, cfg, run.rt.device)}


@torch.no_grad()
def face_body_precision_at_1(model: SSLNet, val: dict[str, np.ndarray], cfg: PretrainConfig,
                             device: torch.device) -> float:
    """Held-out instances: how often a face's nearest body (cosine, SSL features) is its own body."""
    model.eval()
    faces = normalize_uint8(torch.as_tensor(val["face"]).to(device))
    bodies = normalize_uint8(torch.as_tensor(val["body"]).to(device))
    if faces.shape[0] < 2:
        return float("nan")
    zf = torch.cat([F.normalize(model.features(f), dim=1) for f in faces.split(256)])
    zb = torch.cat([F.normalize(model.features(b), dim=1) for b in bodies.split(256)])
    nearest = (zf @ zb.T).argmax(dim=1)
    return float((nearest == torch.arange(len(zf), device=device)).float().mean())


def _validation_arrays(crops: list[str], cfg: PretrainConfig, limit: int = 512) -> dict[str, np.ndarray] | None:
    """Eval-transformed face/body pairs of the held-out instances (small: sent to rank 0 in the config), read on
    the driver shard file by shard file in the crop job's order until ``limit`` pairs: the same pairs every run,
    without starting a Ray Data pipeline for a few hundred crops."""
    from reid.core.contracts.crops import pair_rows
    from reid.core.data import augment
    from reid.core.embedding import decode_rgb, to_uint8_chw

    face_tf = augment.eval_transform(cfg.face_size, "face")
    body_tf = augment.eval_transform(cfg.body_size, "body")
    faces, bodies = [], []
    held_out = (row for path in crops for row in pair_rows(io.read_parquet(path))
                if row["face"] and row["body"] and is_validation_key(row["key"]))
    for row in itertools.islice(held_out, limit):  # no shard is read, no crop decoded, past the limit
        faces.append(to_uint8_chw(face_tf(decode_rgb(row["face"]))))
        bodies.append(to_uint8_chw(body_tf(decode_rgb(row["body"]))))
    if len(faces) < 2:
        return None
    return {"face": np.stack(faces), "body": np.stack(bodies)}


def _put(value):
    """The object-store ref of ``value`` (None stays None): a train loop config is copied to every worker."""
    import ray

    return None if value is None else ray.put(value)


def run_pretrain(cfg: PretrainConfig, parent_run_id: str | None = None, run_config=None):
    """Driver: build the datasets and the TorchTrainer, fit, and return (result, model checkpoint path)."""
    import ray
    from ray.train.torch import TorchTrainer

    from reid.core.contracts.crops import committed_crop_files
    from reid.runtime.ray_datasets import count_character_instances, ssl_dataset
    from reid.runtime.raycluster import init_ray
    from reid.runtime.run_inputs import crops_dataset

    crop_files = committed_crop_files(cfg.crops)  # on the driver, before Ray: a finished, undamaged crop output
    train_instances = count_character_instances(crop_files)  # the files verified once, passed on
    if train_instances < cfg.batch_size:
        raise ConfigError(f"{cfg.crops} has {train_instances} character instances, fewer than one batch "
                          f"({cfg.batch_size}); lower --batch-size")
    cfg, augmentation = choose_colour_augmentation(cfg, crop_files)
    console.open_log()
    log.info("pretrain: %s corpus (mean saturation %.3f of a crop sample): hue jitter %.2g, grayscale %.2g (%s)",
             augmentation["corpus_colour"], augmentation["mean_saturation"], cfg.hue, cfg.grayscale,
             augmentation["source"])
    init_ray(cfg.ray_address, cfg.ray_num_cpus)
    if cfg.gpu and not ray.cluster_resources().get("GPU"):
        raise ConfigError("--gpu was given but the Ray cluster has no GPU")
    train = ssl_dataset(crop_files, cfg.face_size, cfg.body_size, cfg.data_cpus, cfg.hue, cfg.grayscale,
                        seed=cfg.seed)
    tracker = open_run(cfg, "pretrain", parent_run_id)
    tracker.log_inputs([(crops_dataset(cfg.crops), "training")])
    loop_config = {"cfg": config.to_dict(cfg), "train_instances": train_instances,
                   "val": _put(_validation_arrays(crop_files, cfg)), "parent_run_id": parent_run_id,
                   "run_id": tracker.run_id, "marker_dir": run_dir(cfg.storage, cfg.name),
                   "spool_dir": spool_dir(cfg.storage, cfg.name)}
    trainer = TorchTrainer(pretrain_loop, train_loop_config=loop_config, datasets={"train": train},
                           dataset_config=data_config(),
                           scaling_config=scaling_config(cfg.workers, cfg.gpu, cfg.cpus_per_worker),
                           run_config=run_config or trainer_run_config(cfg.name, cfg.storage, cfg.max_failures))
    # a worker's ReidError (bad input, mismatch, NaN loss) is raised here, unretried; a bar shows the epochs
    result = fit_tracked(trainer, tracker, "pretrain", cfg.storage, cfg.name)
    model_path = publish_model(result.checkpoint.path, cfg.storage, cfg.name)
    _record_augmentation(model_path, augmentation)
    log_to_mlflow(cfg, model_path, tracker, augmentation)
    return result, model_path


def sample_crops(files: list[str], limit: int = 256) -> list:
    """Up to ``limit`` decoded crops spread over the crop output's shard ``files`` (for measuring the corpus):
    the first rows of each file, never a whole shard."""
    from reid.core.embedding import decode_rgb

    images: list = []
    per_file = max(1, -(-limit // max(1, len(files))))
    for path in files:
        table = io.read_parquet(path, ["instance_id", "image"], max_rows=per_file)
        images += [decode_rgb(data, f"{path}#{instance}")
                   for instance, data in zip(table["instance_id"].to_pylist(), table["image"].to_pylist(), strict=True)]
        if len(images) >= limit:
            break
    return images[:limit]


def choose_colour_augmentation(cfg: PretrainConfig, crop_files: list[str]) -> tuple[PretrainConfig, dict[str, Any]]:
    """The config with --hue/--grayscale filled from the corpus where they were left unset, and the record of
    that choice (:func:`reid.core.data.augment.colour_augmentation`; measured on a sample of ``crop_files``, the crop
    output's data files as the driver verified them)."""
    from reid.core.data.augment import colour_augmentation, mean_saturation

    choice = colour_augmentation(mean_saturation(sample_crops(crop_files)))
    explicit = {k: getattr(cfg, k) for k in ("hue", "grayscale") if getattr(cfg, k) is not None}
    choice["source"] = "flags" if len(explicit) == 2 else "measured corpus" if not explicit else "flags and corpus"
    values = {"hue": choice["hue"], "grayscale": choice["grayscale"], **explicit}
    choice.update(values)
    return config.replace(cfg, **values), choice


def _record_augmentation(model_path: str, augmentation: dict[str, Any]) -> None:
    """Store the colour-augmentation choice in the published SSL checkpoint's ``extra`` (same weights)."""
    from reid.core.models.checkpoint import load_model_checkpoint, save_model_checkpoint

    model, _, extra = load_model_checkpoint(model_path)
    save_model_checkpoint(model, model_path, extra={**extra, "augmentation": augmentation})


def log_to_mlflow(cfg: PretrainConfig, model_path: str, tracker: Any,
                  augmentation: dict[str, Any] | None = None) -> None:
    """The driver's part of the run's MLflow record (``tracker``: :func:`reid.stages.train.tracked.open_run`'s), then the
    run's end: the colour-augmentation choice, the loss curves (a PNG of the logged history) and the SSL model
    (``runs:/<id>/ssl_model/model.pt``, what ``jobs/finetune.py --ssl-checkpoint`` accepts)."""
    from reid.core.plots import curves_png
    from reid.runtime.registry import log_ssl_model

    if augmentation:
        tracker.log_params({f"augmentation_{k}": v for k, v in augmentation.items()})
    tracker.flush(final=True)  # MLflow may have come back since the driver opened the run
    if tracker.run_id is None or io.is_uri(model_path):
        if tracker.run_id is None:  # what the trackers could not log is spooled, to replay
            log.warning("pretrain: MLflow unavailable; the curves and the SSL model were not logged (model: %s)",
                        model_path)
        tracker.close()
        return
    history = tracker.metric_history(["loss", "face", "body", "identity", "val_face_body_p1"])
    plot = io.join(os.path.dirname(model_path), "curves.png")
    io.write_bytes_atomic(plot, curves_png(
        {"training loss": {k: history.get(k, []) for k in ("loss", "face", "body", "identity")},
         "validation": {"face-body precision@1": history.get("val_face_body_p1", [])}},
        f"pretraining {cfg.name}"))
    tracker.log_artifact(plot, "plots")
    log_ssl_model(tracker, None, model_path)
    tracker.close()

