"""Fine-tuning's configuration and the metrics both its training loop and its driver-side publishing use
(:mod:`reid.stages.train.finetune`, :mod:`reid.stages.train.finetune_publish`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from reid.core import config
from reid.core.embedding import embed_batches
from reid.core.linking import LINK_CONSTRAINTS, LINK_DISTANCES
from reid.core.models import ReIDNet
from reid.stages.train.tracked import SYSTEM_METRICS_HELP

SELECT_METRIC = "val_mean_average_precision_at_r"
FINAL_PREFIX = "final_val_"  # the published model's validation metrics, logged once at the end and linked to it
CHAMPION_METRIC = FINAL_PREFIX + "mean_average_precision_at_r"  # what a new version must beat to be champion


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tune the Re-ID net (face+body fusion → 256-d) with a contrastive loss, on Ray Train."""

    crops: str = field(default="runs/demo/crops", metadata={"help": "output folder of jobs/crop.py"})
    sequences: str = field(default="runs/demo/corpus/data/comics_seq",
                           metadata={"help": "folder of <split>_sequences.json"})
    extra_sequences: str = field(default="", metadata={
        "help": "more training sequences: comma-separated folders of train_sequences.json (e.g. the reviewed "
                "identities of jobs/review.py export-sequences); a window that is also annotated, or that shares "
                "a panel with a validation or test sequence, is left out"})
    ssl_checkpoint: str | None = field(default=None, metadata={"help": "model.pt of a pretrain run "
                                                                        "(none = random init, a baseline)"})
    storage: str = field(default="runs/train", metadata={"help": "Ray Train storage path"})
    name: str = field(default="finetune", metadata={"help": "run name: same name and storage = resume, in "
                                                                 "the same MLflow run; the MLflow run's name"})
    arch: str = field(default="resnet50", metadata={"help": "backbone when no --ssl-checkpoint is given"})
    face_size: int = field(default=96, metadata={"help": "face crop side, px"})
    body_size: int = field(default=128, metadata={"help": "body crop side (longer side, padded square), px"})
    embed_dim: int = 256
    freeze_ssl: bool = field(default=False, metadata={"help": "train only the fusion Linear (the paper's recipe; "
                                                              "the default trains the SSL layers too)"})
    flip_average: bool = field(default=True, metadata={"help": "the model embeds each crop and its mirror image and "
                                                                "averages them at inference (validation, "
                                                                "calibration, labeling); the paper: off"})
    epochs: int = 20
    sequences_per_batch: int = field(default=8, metadata={"help": "whole sequences per global batch"})
    shuffle_buffer: int = field(default=64, metadata={"help": "sequences each worker holds for its local shuffle "
                                                              "(training rows are also read in a seeded random "
                                                              "order, so that batches mix series)"})
    lr: float = field(default=3e-4, metadata={"help": "AdamW learning rate (the paper, frozen: 7.5e-4)"})
    weight_decay: float = 0.05
    lr_gamma: float = 0.95
    pos_margin: float = 0.0
    neg_margin: float = 1.0
    miner: str | None = field(default=None, metadata={"help": "none or pair_margin"})
    select: str = field(default="last", metadata={"help": "model kept: last (the last epoch's) or best (best "
                                                          "validation MAP@R, the paper; noisy when the validation "
                                                          "split is small)"})
    val_every: int = field(default=1, metadata={"help": "validate every N epochs (and after the last)"})
    link_distance: str = field(default="centroid", metadata={
        "help": "series linking's distance between window identities, calibrated and stored with the model: "
                "centroid | members | rerank (reid/core/linking.py)"})
    link_constraint: str = field(default="hard", metadata={
        "help": "series linking's cannot-link, calibrated and stored with the model: hard | soft"})
    workers: int = field(default=2, metadata={"help": "Ray Train workers (DDP processes)"})
    gpu: bool = False
    cpus_per_worker: float = field(default=1.0, metadata={"help": "Ray CPUs per train worker"})
    data_cpus: float = 0.5
    max_failures: int = 2
    register_as: str = field(default="comic-reid", metadata={"help": "register the fine-tuned model in the MLflow "
                                                                    "model registry under this name ('' = don't)"})
    log_model: bool = field(default=True, metadata={"help": "log the model as an MLflow model (pytorch flavour "
                                                            "and the embedding pyfunc)"})
    seed: int = 0
    ray_address: str | None = None
    ray_num_cpus: int | None = None
    mlflow_uri: str | None = None
    experiment: str = "comic-reid"
    system_metrics_s: float = field(default=10.0, metadata={"help": SYSTEM_METRICS_HELP})
    strict: bool = config.strict_field("a bad sequence entry")
    max_bad_row_fraction: float = config.max_bad_fraction_field("a split's sequences file")
    fault_epoch: int = -1

    def __post_init__(self) -> None:
        config.check_bad_fraction(self.max_bad_row_fraction)
        config.check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        config.check(self.sequences_per_batch >= self.workers,
                     f"sequences_per_batch ({self.sequences_per_batch}) must be >= workers ({self.workers})")
        config.check(self.shuffle_buffer >= 1, f"shuffle_buffer must be >= 1, got {self.shuffle_buffer}")
        config.check(self.lr > 0, "lr must be > 0")
        config.check(0 < self.lr_gamma <= 1, "lr_gamma must be in (0, 1]")
        config.check(self.neg_margin > self.pos_margin >= 0,
                     f"need neg_margin > pos_margin >= 0, got {self.neg_margin}, {self.pos_margin}")
        config.check(self.miner in (None, "pair_margin"), f"miner must be none or pair_margin, got {self.miner}")
        config.check(self.select in ("last", "best"), f"select must be last or best, got {self.select!r}")
        config.check(self.val_every >= 1, f"val_every must be >= 1, got {self.val_every}")
        config.check(self.select == "last" or self.val_every == 1, "select=best needs val_every=1")
        config.check(self.link_distance in LINK_DISTANCES,
                     f"link_distance must be one of {LINK_DISTANCES}, got {self.link_distance!r}")
        config.check(self.link_constraint in LINK_CONSTRAINTS,
                     f"link_constraint must be one of {LINK_CONSTRAINTS}, got {self.link_constraint!r}")


def evaluate(model: ReIDNet, batches, device: torch.device, prefix: str) -> dict[str, float]:
    from reid.core.eval.metrics import retrieval_metrics

    out = embed_batches(model, batches, device)
    if len(out["labels"]) == 0:
        return {}
    metrics = retrieval_metrics(out["embeddings"], out["labels"], out["sequences"])
    return {f"{prefix}_{k}": float(v) for k, v in metrics.items()}
