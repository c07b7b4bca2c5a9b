"""Stage 2: semi-supervised fine-tuning of the Re-ID net on labelled sequences, on Ray Train.

Batches are whole sequences; positives and negatives come from inside a sequence plus "other series"
negatives (docs/DATA.md). Validation MAP@R is computed every epoch on rank 0, the best checkpoint is kept,
and the driver evaluates it on the test split, exports it (TorchScript) and logs everything to MLflow.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch

from reid.core import config, console, io
from reid.core.data import formats
from reid.core.embedding import collate_sequences, normalize_uint8
from reid.core.errors import CheckpointError, ConfigError
from reid.core.models import ModelConfig, ReIDNet, reid_net_from_ssl_checkpoint
from reid.core.models.backbone import REID_FIELDS
from reid.runtime import faults
from reid.stages.train.device import Runtime, prepare_for_device, unwrap
from reid.stages.train.finetune_config import SELECT_METRIC, FinetuneConfig, evaluate
from reid.stages.train.finetune_publish import finish
from reid.stages.train.loop import Parts, Run, check_finite, end_epoch, start_run
from reid.stages.train.ray_config import data_config, run_dir, scaling_config, spool_dir, trainer_run_config
from reid.stages.train.tracked import fit_tracked, open_run

log = logging.getLogger(__name__)
ARCHITECTURE_KEYS = (*REID_FIELDS, "ssl_checkpoint")


def build_model(cfg: FinetuneConfig) -> ReIDNet:
    if cfg.ssl_checkpoint:
        net = reid_net_from_ssl_checkpoint(cfg.ssl_checkpoint, embed_dim=cfg.embed_dim, freeze_ssl=cfg.freeze_ssl,
                                           flip_average=cfg.flip_average)
        if (net.config.face_size, net.config.body_size) != (cfg.face_size, cfg.body_size):
            raise CheckpointError(f"{cfg.ssl_checkpoint} was trained at face/body {net.config.face_size}/"
                                  f"{net.config.body_size} px; this run asks for {cfg.face_size}/{cfg.body_size}")
        return net
    return ReIDNet(ModelConfig(arch=cfg.arch, face_size=cfg.face_size, body_size=cfg.body_size,
                               embed_dim=cfg.embed_dim, freeze_ssl=cfg.freeze_ssl, flip_average=cfg.flip_average))


def finetune_loop(loop_config: dict[str, Any]) -> None:
    """Ray Train worker function."""
    import ray.train

    from reid.core.losses import SequencePairLoss

    cfg = config.from_dict(FinetuneConfig, loop_config["cfg"])
    run = start_run(cfg, loop_config, "finetune", build=lambda: _build(cfg), prepare=_prepare,
                    architecture_keys=ARCHITECTURE_KEYS, params=loop_config["cfg"],
                    steps_per_epoch=loop_config.get("steps_per_epoch", 1))
    # Every rank computes the loss of the whole global batch (pairs across workers' sequences too).
    loss_fn = SequencePairLoss(cfg.pos_margin, cfg.neg_margin, cfg.miner, gather_distributed=run.rt.world_size > 1)
    train_shard = ray.train.get_dataset_shard("train")
    for epoch in range(run.start_epoch, cfg.epochs):
        metrics = train_one_epoch(run, cfg, train_shard, loss_fn, epoch)
        metrics.update(validate(run, cfg, epoch))
        end_epoch(run, metrics, epoch)
    run.close()


def _build(cfg: FinetuneConfig) -> Parts:
    model = build_model(cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return model, optimizer, torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.lr_gamma)


def _prepare(model: ReIDNet, rt: Runtime) -> torch.nn.Module:
    return prepare_for_device(model, rt.device, channels_last=False, sync_bn=False, world_size=rt.world_size,
                              compile_model=False)


def train_one_epoch(run: Run, cfg: FinetuneConfig, shard: Any, loss_fn: torch.nn.Module, epoch: int
                    ) -> dict[str, float]:
    """One pass over this worker's shard, a batch of whole sequences per step: the mean loss, throughput, LR."""
    run.net.train()
    per_worker = cfg.sequences_per_batch // run.rt.world_size
    device = run.rt.device
    total, batches, samples, start = 0.0, 0, 0, time.time()
    for raw in shard.iter_batches(batch_size=per_worker, batch_format="numpy", drop_last=True,
                                  local_shuffle_buffer_size=max(per_worker, cfg.shuffle_buffer),
                                  local_shuffle_seed=cfg.seed * 1000 + epoch):
        batch = collate_sequences(raw)
        emb = run.net(normalize_uint8(batch["face"].to(device)), normalize_uint8(batch["body"].to(device)),
                      batch["face_mask"].to(device), batch["body_mask"].to(device))
        loss = loss_fn(emb.float(), batch["labels"].to(device), batch["sequence"].to(device),
                       batch["series"].to(device))
        check_finite(loss, epoch, run.step)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        run.step += 1
        batches += 1
        if batches == 1:  # mid-epoch, as a real failure would be
            faults.worker_exit_once(cfg.fault_epoch, epoch, run.folder, run.rt.rank)
        samples += len(batch["labels"])
        total += loss.item()
        run.progress.update(epoch, batches, total / batches,
                            samples * run.rt.world_size / max(time.time() - start, 1e-9))
    run.scheduler.step()
    elapsed = time.time() - start
    return {"epoch": epoch, "loss": total / max(1, batches), "batches": batches,
            "samples_per_s": samples * run.rt.world_size / max(elapsed, 1e-9), "lr": run.scheduler.get_last_lr()[0]}


def validate(run: Run, cfg: FinetuneConfig, epoch: int) -> dict[str, float]:
    """Rank 0, every ``val_every`` epochs and after the last: the retrieval metrics of the validation sequences,
    and the best selection score so far (kept in ``run.best``). The selection metric is in every report (NaN
    when not measured): Ray Train ranks the checkpoints by it."""
    import ray.train

    if run.rt.rank != 0 or not ((epoch + 1) % cfg.val_every == 0 or epoch == cfg.epochs - 1):
        return {SELECT_METRIC: float("nan")}
    val = ray.train.get_dataset_shard("val")
    metrics = evaluate(unwrap(run.net), val.iter_batches(batch_size=8, batch_format="numpy"), run.rt.device, "val")
    score = metrics.get(SELECT_METRIC, float("nan"))
    if not np.isnan(score) and (run.best is None or score > run.best):
        run.best = score
    metrics["best_" + SELECT_METRIC] = run.best if run.best is not None else float("nan")
    metrics.setdefault(SELECT_METRIC, float("nan"))
    return metrics


def run_finetune(cfg: FinetuneConfig, parent_run_id: str | None = None, run_config=None) -> dict[str, Any]:
    """Driver: datasets, TorchTrainer, then test evaluation, export and MLflow logging of the best model.

    Returns {"best_model": path, "exported": path, "test": metrics, "result": ray Result}.
    """
    import ray
    from ray.train import CheckpointConfig
    from ray.train.torch import TorchTrainer

    from reid.runtime import registry
    from reid.runtime.ray_datasets import sequence_dataset
    from reid.runtime.raycluster import init_ray

    if registry.is_model_uri(cfg.ssl_checkpoint):  # models:/ or runs:/ → a file on the run's storage
        from reid.runtime.mlflow_store import default_tracking_uri

        path, provenance = registry.resolve_model_uri(cfg.ssl_checkpoint, default_tracking_uri(cfg.mlflow_uri),
                                                      io.join(run_dir(cfg.storage, cfg.name), "_ssl_model"))
        log.info("finetune: SSL checkpoint %s (%s)", path, provenance)
        cfg = config.replace(cfg, ssl_checkpoint=path)
    if cfg.ssl_checkpoint and not io.exists(cfg.ssl_checkpoint):
        raise CheckpointError(f"{cfg.ssl_checkpoint}: SSL checkpoint not found")
    model = build_model(cfg)  # fail fast on a bad checkpoint, before any Ray work
    splits, bad = read_splits(cfg)
    console.open_log()
    init_ray(cfg.ray_address, cfg.ray_num_cpus)
    if cfg.gpu and not ray.cluster_resources().get("GPU"):
        raise ConfigError("--gpu was given but the Ray cluster has no GPU")
    if len(splits["train"]) < cfg.sequences_per_batch:
        raise ConfigError(f"{cfg.sequences}: {len(splits['train'])} train sequences, fewer than one batch "
                          f"({cfg.sequences_per_batch})")
    datasets = {
        "train": sequence_dataset(cfg.crops, splits["train"], cfg.face_size, cfg.body_size, True, cfg.data_cpus,
                                  seed=cfg.seed),
        "val": sequence_dataset(cfg.crops, splits["validation"], cfg.face_size, cfg.body_size, False,
                                cfg.data_cpus, transform=model.config.transform),
    }
    tracker = open_run(cfg, "finetune", parent_run_id)
    inputs = input_datasets(cfg)
    tracker.log_inputs([(dataset, context) for context, datasets in inputs.items() for dataset in datasets])
    loop_config = {"cfg": config.to_dict(cfg), "parent_run_id": parent_run_id, "run_id": tracker.run_id,
                   "marker_dir": run_dir(cfg.storage, cfg.name), "spool_dir": spool_dir(cfg.storage, cfg.name),
                   "steps_per_epoch": max(1, len(splits["train"]) // cfg.sequences_per_batch)}
    run_config = run_config or trainer_run_config(cfg.name, cfg.storage, cfg.max_failures)
    run_config.checkpoint_config = (
        CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=SELECT_METRIC, checkpoint_score_order="max")
        if cfg.select == "best" else CheckpointConfig(num_to_keep=2))
    trainer = TorchTrainer(finetune_loop, train_loop_config=loop_config, datasets=datasets,
                           dataset_config=data_config(["train"]),
                           scaling_config=scaling_config(cfg.workers, cfg.gpu, cfg.cpus_per_worker),
                           run_config=run_config)
    # a worker's ReidError (bad input, mismatch, NaN loss) is raised here, unretried; a bar shows the epochs
    result = fit_tracked(trainer, tracker, "finetune", cfg.storage, cfg.name)

    out = finish(cfg, result, splits["validation"], splits["test"], tracker,
                 {"validation": inputs["validation"][0], "test": inputs["testing"][0]})
    return {**out, "bad_sequences": len(bad), "bad_sequences_file": sequence_errors_path(cfg)}


def input_datasets(cfg: FinetuneConfig) -> dict[str, list]:
    """What fine-tuning reads, as MLflow datasets (:mod:`reid.runtime.run_inputs`) by context: the crops and the training
    sequences (with ``--extra-sequences``) for training, the validation and the test sequences."""
    from reid.runtime.run_inputs import crops_dataset, sequences_dataset

    def split(root: str, name: str):
        return sequences_dataset(formats.split_file(root, name, "sequences"))

    extra = [s.strip() for s in cfg.extra_sequences.split(",") if s.strip()]
    return {"training": [crops_dataset(cfg.crops), split(cfg.sequences, "train"),
                         *(split(source, "train") for source in extra)],
            "validation": [split(cfg.sequences, "validation")], "testing": [split(cfg.sequences, "test")]}


def sequence_errors_path(cfg: FinetuneConfig) -> str:
    """Where fine-tuning records the sequence entries it left out (read it with ``pandas.read_parquet``)."""
    return io.join(run_dir(cfg.storage, cfg.name), "errors", "sequences.parquet")


def read_splits(cfg: FinetuneConfig) -> tuple[dict[str, list], list[formats.BadRow]]:
    """The train/validation/test sequences, checked on the driver against the crop job's instances (which
    must be complete), and the entries left out. Bad entries are recorded in :func:`sequence_errors_path`
    (``--strict``: refused); more than ``--max-bad-row-fraction`` of a split refuses the file."""
    from reid.core.contracts.crops import known_instance_ids
    from reid.core.contracts.manifest import error_table, table_to_parquet_bytes

    known = known_instance_ids(cfg.crops)
    policy = formats.RowPolicy(cfg.strict, cfg.max_bad_row_fraction)
    splits, bad = {}, []
    for split in ("train", "validation", "test"):
        splits[split], left_out = formats.read_split_checked(cfg.sequences, split, policy, known)
        bad += left_out
    for source in filter(None, (s.strip() for s in cfg.extra_sequences.split(","))):
        extra, left_out = formats.read_split_checked(source, "train", policy, known)
        bad += left_out
        splits["train"] += _new_training_windows(extra, splits, source)
    path = sequence_errors_path(cfg)
    io.write_bytes_atomic(path, table_to_parquet_bytes(error_table([b.as_error("input") for b in bad])))
    if bad:
        log.warning("finetune: %d sequence(s) left out and recorded in %s (first: %s, %s: %s)", len(bad), path,
                    bad[0].source, bad[0].where, bad[0].reason)
    return splits, bad


def _new_training_windows(extra: list, splits: dict[str, list], source: str) -> list:
    """The sequences of another source that add to training: not a window already annotated, and no panel of
    a validation or test sequence (those stay unseen)."""
    annotated = {s.seq_id for seqs in splits.values() for s in seqs}
    held_out = {p for split in ("validation", "test") for s in splits[split] for p in s.panels}
    kept = [s for s in extra if s.seq_id not in annotated and not held_out.intersection(s.panels)]
    log.info("finetune: %d of %d training sequences of %s added (the others are annotated or held out)",
             len(kept), len(extra), source)
    return kept
