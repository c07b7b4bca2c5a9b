"""Sweep of identity-aware SSL pretraining: the NT-Xent temperature (log-uniform), optionally the learning
rate, searched by Optuna's TPE (or at random) with ASHA early stopping on ``val_face_body_p1``.

``val_face_body_p1`` is the held-out instances' face→body nearest-neighbour precision@1 with the SSL
features (rank 0, every epoch): cheap, and it measures what the identity-aware term is for. A trial is
judged by its last epoch, because its published model (``final/model.pt``) is its last checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from reid.core import config, io
from reid.core.errors import ConfigError
from reid.stages.sweeps.trials import SweepResult, SweepSettings, SweepSpec, run_sweep
from reid.stages.train.pretrain import PretrainConfig, run_pretrain

METRIC = "val_face_body_p1"
SPEC = SweepSpec(stage="pretrain", job_cls=PretrainConfig, run_job=run_pretrain, metric_of=lambda cfg: METRIC,
                 mode="max")


@dataclass(frozen=True)
class PretrainSweepConfig(PretrainConfig, SweepSettings):
    """Ray Tune sweep of pretraining; every pretrain flag sets the trials' base config."""

    name: str = field(default="pretrain-sweep", metadata={
        "help": "sweep name: same name = resume; MLflow parent run key; trials are <name>-<trial id>"})
    workers: int = field(default=2, metadata={"help": "Train workers of each trial"})
    temperature_min: float = 0.03
    temperature_max: float = 0.5
    lr_min: float | None = field(default=None, metadata={
        "help": "also search lr, log-uniform in [lr_min, lr_max] (none = the fixed --lr)"})
    lr_max: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_sweep()
        config.check(0 < self.temperature_min <= self.temperature_max,
                     f"need 0 < temperature_min <= temperature_max, got {self.temperature_min}, "
                     f"{self.temperature_max}")
        config.check((self.lr_min is None) == (self.lr_max is None), "give both lr_min and lr_max, or neither")
        config.check(self.lr_min is None or 0 < self.lr_min <= self.lr_max,
                     f"need 0 < lr_min <= lr_max, got {self.lr_min}, {self.lr_max}")


def log_uniform(low: float, high: float) -> Any:
    """``tune.loguniform(low, high)``, or the constant ``low`` when the range is one point."""
    from ray import tune

    return low if low == high else tune.loguniform(low, high)


def search_space(cfg: PretrainSweepConfig) -> dict[str, Any]:
    space = {"temperature": log_uniform(cfg.temperature_min, cfg.temperature_max)}
    if cfg.lr_min is not None:
        space["lr"] = log_uniform(cfg.lr_min, cfg.lr_max)
    return space


def held_out_pairs(crops_root: str) -> int:
    """Held-out character instances with both a face and a body: what ``val_face_body_p1`` is computed on.

    Read from the crop ids alone (no image bytes), without Ray.
    """
    import pyarrow as pa

    from reid.core.contracts.crops import committed_crop_files, pair_rows
    from reid.runtime.ray_datasets import is_validation_key

    total = 0
    for path in committed_crop_files(crops_root):
        table = io.read_parquet(path, ["instance_id", "panel_id", "series_id", "type", "char_index"])
        rows = pair_rows(table.append_column("image", pa.array([b"x"] * table.num_rows, pa.binary())))
        total += sum(1 for r in rows if r["face"] and r["body"] and is_validation_key(r["key"]))
    return total


def run_pretrain_sweep(cfg: PretrainSweepConfig) -> SweepResult:
    """Run or resume the sweep; the best trial's config goes to ``<storage>/<name>/best.yaml``."""
    pairs = held_out_pairs(cfg.crops)
    if pairs < 2:
        raise ConfigError(f"{cfg.crops}: {pairs} held-out instance(s) with both a face and a body; the sweep's "
                          f"metric {METRIC} needs at least 2 (use a larger corpus)")
    return run_sweep(cfg, SPEC, search_space(cfg))
