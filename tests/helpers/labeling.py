"""Helpers of the label job tests: a job config for the tiny crops, its CLI arguments, the crop ids."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import torch

from reid.core.models import ModelConfig, ReIDNet, save_model_checkpoint
from reid.stages.label import LabelConfig


def random_reid_model(folder: Path) -> Path:
    """A randomly initialised (seed 0) tiny Re-ID checkpoint: ResNet-18, faces 32 px, bodies 48 px."""
    torch.manual_seed(0)
    path = folder / "model.pt"
    save_model_checkpoint(ReIDNet(ModelConfig(arch="slim_resnet10", face_size=32, body_size=48)), str(path))
    return path


def label_config(crops_root: Path, out: Path, model_path: Path, thresholds, mlflow_uri: str, **kw
                 ) -> LabelConfig:
    kw = {"num_cpus_per_actor": 0.5, "num_cpus_per_task": 0.5, "max_actors": 2, **kw}
    return LabelConfig(model=str(model_path), crops=str(crops_root), out=str(out), threshold=thresholds[0],
                       link_threshold=thresholds[1], batch_size=16, mlflow_uri=mlflow_uri, **kw)


def cli_args(cfg: LabelConfig) -> list[str]:
    args = []
    for key in ("model", "crops", "out", "threshold", "link_threshold", "num_cpus_per_actor", "num_cpus_per_task",
                "max_actors", "batch_size", "mlflow_uri", "name", "report_windows"):
        args += ["--" + key.replace("_", "-"), str(getattr(cfg, key))]
    return args


def crop_ids(crops_root: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(ok crop id -> panel id, failed crop id -> reason)."""
    ok = pq.read_table(crops_root / "data", columns=["instance_id", "panel_id"]).to_pylist()
    errors = pq.read_table(crops_root / "errors").to_pylist()
    return {r["instance_id"]: r["panel_id"] for r in ok}, {e["id"]: e["reason"] for e in errors}
