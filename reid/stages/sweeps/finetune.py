"""Sweep of fine-tuning: the contrastive loss's positive and negative margins and the learning rate,
maximising validation MAP@R, searched by Optuna's TPE (or at random) with ASHA early stopping.

A trial is judged on the model it publishes (rank 0 computes validation MAP@R; Tune sees rank 0's report):
with ``--select last`` (the default) its last epoch's ``val_mean_average_precision_at_r``, with ``--select
best`` the best so far (``best_val_mean_average_precision_at_r``). Margin ranges must not overlap, so every
sample satisfies neg_margin > pos_margin.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from reid.core import config
from reid.stages.sweeps.pretrain import log_uniform
from reid.stages.sweeps.trials import SweepResult, SweepSettings, SweepSpec, run_sweep
from reid.stages.train.finetune import SELECT_METRIC, FinetuneConfig, run_finetune


def published_metric(cfg: FinetuneConfig) -> str:
    """The reported metric that scores the model fine-tuning publishes under ``cfg.select``."""
    return SELECT_METRIC if cfg.select == "last" else f"best_{SELECT_METRIC}"


SPEC = SweepSpec(stage="finetune", job_cls=FinetuneConfig, run_job=run_finetune, metric_of=published_metric,
                 mode="max")


@dataclass(frozen=True)
class FinetuneSweepConfig(FinetuneConfig, SweepSettings):
    """Ray Tune sweep of fine-tuning; every finetune flag sets the trials' base config."""

    name: str = field(default="finetune-sweep", metadata={
        "help": "sweep name: same name = resume; MLflow parent run key; trials are <name>-<trial id>"})
    workers: int = field(default=2, metadata={"help": "Train workers of each trial"})
    register_as: str = field(default="", metadata={"help": "trials are not registered in the MLflow model "
                                                           "registry"})
    log_model: bool = field(default=False, metadata={"help": "log each trial's model as an MLflow model"})
    pos_margin_min: float = 0.0
    pos_margin_max: float = 0.3
    neg_margin_min: float = 0.6
    neg_margin_max: float = 1.4
    lr_min: float = 1e-4
    lr_max: float = 3e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_sweep()
        config.check(0 <= self.pos_margin_min <= self.pos_margin_max < self.neg_margin_min <= self.neg_margin_max,
                     "need 0 <= pos_margin_min <= pos_margin_max < neg_margin_min <= neg_margin_max, got "
                     f"{self.pos_margin_min}, {self.pos_margin_max}, {self.neg_margin_min}, {self.neg_margin_max}")
        config.check(0 < self.lr_min <= self.lr_max, f"need 0 < lr_min <= lr_max, got {self.lr_min}, {self.lr_max}")
        config.check(self.val_every == 1, f"a sweep validates every epoch (ASHA compares trials at each epoch), "
                                          f"got val_every {self.val_every}")


def uniform(low: float, high: float) -> Any:
    from ray import tune

    return low if low == high else tune.uniform(low, high)


def search_space(cfg: FinetuneSweepConfig) -> dict[str, Any]:
    return {"pos_margin": uniform(cfg.pos_margin_min, cfg.pos_margin_max),
            "neg_margin": uniform(cfg.neg_margin_min, cfg.neg_margin_max),
            "lr": log_uniform(cfg.lr_min, cfg.lr_max)}


def run_finetune_sweep(cfg: FinetuneSweepConfig) -> SweepResult:
    """Run or resume the sweep; the best trial's config goes to ``<storage>/<name>/best.yaml``."""
    return run_sweep(cfg, SPEC, search_space(cfg))
