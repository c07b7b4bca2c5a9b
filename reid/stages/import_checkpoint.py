"""Import job: one of the paper's Lightning checkpoints -> our checkpoint, its report, an MLflow run.

The conversion is :func:`reid.core.models.paper_import.import_paper_checkpoint` (no code from the file runs). The job
also writes the :class:`~reid.core.models.paper_import.ImportReport` as JSON next to the model and logs an MLflow run
(params: the source's sha256, the detected kind, the model config, key counts, foreign globals; artifacts: the
report and the written model). The MLflow store is ``--mlflow-uri``, else ``MLFLOW_TRACKING_URI``, else a SQLite
file ``mlflow.db`` in the output's folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any

from reid.core import config, io
from reid.core.models.paper_import import KINDS, ImportReport, import_paper_checkpoint


@dataclass(frozen=True)
class ImportConfig:
    """Import the paper's identity-aware SSL or fine-tuned Re-ID Lightning checkpoint as our checkpoint."""

    source: str = field(default="", metadata={"help": "the paper's .ckpt (path or URI)", "aliases": ("--from",)})
    out: str = field(default="", metadata={"help": "our checkpoint to write (path or URI), e.g. model.pt"})
    kind: str | None = field(default=None, metadata={"help": "ssl | reid (default: detected from the keys)"})
    face_size: int = field(default=96, metadata={"help": "face input size N (the paper's: 96)"})
    body_size: int = field(default=128, metadata={"help": "body input size N (the paper's: 128)"})
    ignore_prefixes: tuple[str, ...] = field(default=(), metadata={
        "help": "comma-separated state_dict key prefixes to drop (tensors of extras such as metrics)"})
    report: str | None = field(default=None, metadata={"help": "report JSON (default: <out>.import.json)"})
    mlflow_uri: str | None = field(default=None, metadata={"help": "tracking URI (default: MLFLOW_TRACKING_URI "
                                                                  "or sqlite <out folder>/mlflow.db)"})
    experiment: str = "comic-reid"
    name: str | None = field(default=None, metadata={"help": "MLflow run name (default: import-<sha256[:12]>); "
                                                                "each import is a new run"})

    def __post_init__(self) -> None:
        config.check(bool(self.source), "--from (source) is required: the paper's .ckpt")
        config.check(bool(self.out), "--out is required: the checkpoint to write")
        config.check(self.kind is None or self.kind in KINDS, f"kind={self.kind!r}: expected one of {KINDS}")
        config.check(self.face_size > 0 and self.body_size > 0, "face_size and body_size must be positive")
        config.check(all(self.ignore_prefixes), f"ignore_prefixes {self.ignore_prefixes!r} has an empty prefix")
        config.check(self.out != self.source, "--out must not overwrite --from")

    @property
    def report_path(self) -> str:
        return self.report or f"{self.out}.import.json"


def tracking_uri(cfg: ImportConfig) -> str:
    """``--mlflow-uri``, else ``MLFLOW_TRACKING_URI``, else SQLite in the output's folder (or ./runs for a URI)."""
    from reid.runtime.mlflow_store import default_tracking_uri

    if cfg.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or io.is_uri(cfg.out):
        return default_tracking_uri(cfg.mlflow_uri)
    folder = os.path.dirname(os.path.abspath(cfg.out))
    os.makedirs(folder, exist_ok=True)
    return f"sqlite:///{os.path.join(folder, 'mlflow.db')}"


def _params(cfg: ImportConfig, report: ImportReport) -> dict[str, Any]:
    return {**config.to_dict(cfg), "detected_kind": report.kind, "module": report.module,
            "source_sha256": report.source_sha256, "out_sha256": report.out_sha256,
            "mapped_keys": len(report.mapped), "folded": ",".join(report.folded),
            "duplicates_checked": len(report.duplicates_checked), "ignored_keys": len(report.ignored),
            "foreign_globals": ",".join(report.foreign_globals) or "-", "warnings": len(report.warnings),
            **{f"paper_{k}": v for k, v in report.lightning.items()},
            **{f"model_{k}": v for k, v in report.model_config.items()}}


def run_import(cfg: ImportConfig) -> dict[str, Any]:
    """Convert and write the model (nothing written on any error), then its report and the MLflow run.

    Returns ``{"report": ImportReport, "report_path", "run_id", "tracking_uri"}``.
    """
    from reid.runtime.tracking import Tracker

    report = import_paper_checkpoint(cfg.source, cfg.out, cfg.kind, cfg.face_size, cfg.body_size,
                                     cfg.ignore_prefixes)
    io.write_text_atomic(cfg.report_path, json.dumps(report.to_dict(), indent=1, sort_keys=True))
    local_out = not io.is_uri(cfg.out)
    tracker = Tracker(tracking_uri(cfg), cfg.name or f"import-{report.source_sha256[:12]}", cfg.experiment,
                      tags={"reid.stage": "import", "reid.source_sha256": report.source_sha256},
                      spool_dir=os.path.dirname(os.path.abspath(cfg.out)) if local_out else None)
    tracker.log_params(_params(cfg, report))
    staging = None
    try:
        if local_out and not io.is_uri(cfg.report_path):
            model_file, report_file = cfg.out, cfg.report_path
        else:  # MLflow logs local files: stage remote outputs in a temporary folder
            staging = tempfile.mkdtemp(prefix="reid-import-")
            model_file = os.path.join(staging, os.path.basename(cfg.out) or "model.pt")
            report_file = os.path.join(staging, os.path.basename(cfg.report_path) or "import.json")
            with open(model_file, "wb") as f:
                f.write(io.read_bytes(cfg.out))
            with open(report_file, "wb") as f:
                f.write(io.read_bytes(cfg.report_path))
        tracker.log_artifact(report_file)
        tracker.log_artifact(model_file, "model")
        tracker.close()
    finally:
        if staging:
            shutil.rmtree(staging, ignore_errors=True)
    return {"report": report, "report_path": cfg.report_path, "run_id": tracker.run_id,
            "tracking_uri": tracker.uri}
