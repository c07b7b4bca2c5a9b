"""The label job's configuration and its checks on the driver: the model, its calibrated thresholds, the inputs."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from reid.core import config, io
from reid.core.assign import LINKAGES, METRICS
from reid.core.calibration import PAPER_THRESHOLD
from reid.core.contracts.crops import (
    committed_crop_files,
    crop_job_params,
    known_instance_ids,
)
from reid.core.data import formats
from reid.core.errors import CheckpointError, ConfigError, DataFormatError
from reid.core.images import DEFAULT_MAX_PIXELS
from reid.core.linking import DEFAULT_LINKING, LINK_CONSTRAINTS, LINK_DISTANCES
from reid.runtime.raycluster import UNIT_RETRIES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelConfig:
    """Label every character instance of a cropped corpus with window and series identities."""

    model: str = field(default="runs/train/finetune/final/model.pt",
                       metadata={"help": "Re-ID checkpoint (model.pt of jobs/finetune.py)"})
    crops: str = field(default="runs/demo/crops", metadata={"help": "output folder of jobs/crop.py"})
    out: str = field(default="runs/demo/labels", metadata={"help": "output folder or URI (LABELS)"})
    comics_root: str = field(default="", metadata={"help": "panel images for the report (default: the "
                                                           "crop job's comics_root)"})
    instances: str = field(default="", metadata={"help": "optional check: the instance CSV the crops "
                                                         "were made from"})
    sequences: str = field(default="", metadata={"help": "<split>_sequences.json: label exactly these "
                                                         "windows and evaluate against their charIds"})
    ground_truth: str = field(default="", metadata={"help": "CSV of instance_id,identity (synthetic corpus): "
                                                            "also score windows and series against it"})
    window_size: int = field(default=4, metadata={"help": "consecutive panels per window"})
    stride: int = field(default=4, metadata={"help": "panels between window starts (= window_size: each "
                                                     "panel in one window)"})
    threshold: float | None = field(default=None, metadata={"help": "assigner distance threshold per window "
                                                                    "(default: the model's calibrated value, "
                                                                    "else 0.82)"})
    metric: str = "euclidean"
    linkage: str = "average"
    link_threshold: float | None = field(default=None, metadata={"help": "threshold linking window identities "
                                                                         "across a series (default: the model's "
                                                                         "calibrated value, else 0.82)"})
    link_distance: str | None = field(default=None, metadata={
        "help": "distance between window identities when linking: centroid | members | rerank (default: the "
                "model's calibrated choice, else centroid; reid/core/linking.py)"})
    link_constraint: str | None = field(default=None, metadata={
        "help": "cannot-link between window identities when linking: hard | soft (default: the model's "
                "calibrated choice, else hard)"})
    thresholds_from: str = field(default="", metadata={
        "help": "where the threshold flags came from, recorded with the run as their source (a threshold "
                "sweep's best.yaml sets it; empty: the flags were given by hand)"})
    arch: str | None = field(default=None, metadata={"help": "if set, must match the checkpoint"})
    face_size: int | None = field(default=None, metadata={"help": "if set, must match the checkpoint"})
    body_size: int | None = field(default=None, metadata={"help": "if set, must match the checkpoint"})
    embed_dim: int | None = field(default=None, metadata={"help": "if set, must match the checkpoint"})
    batch_size: int = field(default=128, metadata={"help": "character instances per forward pass"})
    num_cpus_per_actor: float = field(default=1.0, metadata={"help": "Ray CPUs per embedding actor (equal to "
                                                                     "--num-cpus-per-task on CPUs: decoding "
                                                                     "then runs inside the actors)"})
    num_gpus_per_actor: float | None = field(default=None, metadata={"help": "GPUs per actor (default: 1 "
                                                                             "when the cluster has GPUs)"})
    torch_threads: int = field(default=0, metadata={"help": "threads of an actor's forward pass (0: its CPUs "
                                                            "rounded up; Ray would give it floor(CPUs))"})
    max_actors: int = field(default=0, metadata={"help": "actor pool size (0: one per GPU, else as many as "
                                                         "the CPUs hold)"})
    num_cpus_per_task: float = field(default=1.0, metadata={"help": "Ray CPUs per decoding or linking task"})
    max_image_pixels: int = field(default=DEFAULT_MAX_PIXELS, metadata={"help": "decode limit of a crop"})
    save_embeddings: bool = field(default=False, metadata={"help": "keep every instance's embedding "
                                                                   "(always on with --sequences)"})
    corrections: str = field(default="", metadata={"help": "review log of jobs/review.py (LABELS/review.db): "
                                                          "keep its merges and confirmed pairs (must-link), splits "
                                                          "and 'not the same' answers (cannot-link), names and "
                                                          "reviewed identity ids; --out must be another folder"})
    report_windows: int = field(default=8, metadata={"help": "windows drawn in the report (0: no report)"})
    report_series: int = field(default=4, metadata={"help": "series with an identity gallery"})
    report_members: int = field(default=8, metadata={"help": "crops per identity in a gallery"})
    ray_address: str | None = field(default=None, metadata={"help": "Ray cluster (default: RAY_ADDRESS or local)"})
    ray_num_cpus: int | None = field(default=None, metadata={"help": "CPUs of a locally started Ray"})
    mlflow_uri: str | None = field(default=None, metadata={"help": "tracking URI (default: MLFLOW_TRACKING_URI "
                                                                  "or sqlite runs/mlflow.db)"})
    experiment: str = "comic-reid"
    name: str = field(default="label", metadata={"help": "the MLflow run's name (a re-run with the same --out "
                                                          "continues its run; another --out is a new run)"})
    strict: bool = config.strict_field("a bad entry of --sequences")
    max_bad_row_fraction: float = config.max_bad_fraction_field("--sequences")
    unit_retries: int = field(default=UNIT_RETRIES, metadata={"help": "after a labeling process died (out "
                                                                   "of memory, node lost): re-runs of the pass over "
                                                                   "the units not committed yet, before the job "
                                                                   "stops and names them"})
    fail_after_shards: int = field(default=0, metadata={"help": "fault injection for tests: the driver dies "
                                                                "(os._exit) after this many window shards; "
                                                                "actors pause 1 s before each commit"})
    fail_shard: str = field(default="", metadata={"help": "fault injection for tests: the labeling process "
                                                          "working on this shard dies on every attempt"})

    def __post_init__(self) -> None:
        config.check(bool(self.model), "--model is required")
        config.check_bad_fraction(self.max_bad_row_fraction)
        config.check(self.window_size >= 1, f"window_size must be >= 1, got {self.window_size}")
        config.check(self.stride >= 1, f"stride must be >= 1, got {self.stride}")
        config.check(all(t is None or t > 0 for t in (self.threshold, self.link_threshold)),
                     "threshold and link_threshold must be > 0")
        config.check(self.metric in METRICS, f"metric must be one of {METRICS}, got {self.metric!r}")
        config.check(self.linkage in LINKAGES, f"linkage must be one of {LINKAGES}, got {self.linkage!r}")
        config.check(self.link_distance in (None, *LINK_DISTANCES),
                     f"link_distance must be one of {LINK_DISTANCES}, got {self.link_distance!r}")
        config.check(self.link_constraint in (None, *LINK_CONSTRAINTS),
                     f"link_constraint must be one of {LINK_CONSTRAINTS}, got {self.link_constraint!r}")
        config.check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        config.check(self.num_cpus_per_actor > 0 and self.num_cpus_per_task > 0, "CPUs per actor/task must be > 0")
        config.check(self.num_gpus_per_actor is None or self.num_gpus_per_actor >= 0, "num_gpus_per_actor >= 0")
        config.check(self.max_actors >= 0, "max_actors must be >= 0")
        config.check(self.torch_threads >= 0, f"torch_threads must be >= 0, got {self.torch_threads}")
        for name in ("report_windows", "report_series", "report_members", "fail_after_shards", "unit_retries"):
            config.check(getattr(self, name) >= 0, f"{name} must be >= 0")

    @property
    def keep_embeddings(self) -> bool:
        return self.save_embeddings or bool(self.sequences) or self.link_distance == "members"


def load_reid_model(cfg: LabelConfig, expected_sha256: str | None = None, with_extra: bool = False):
    """The Re-ID net of ``cfg.model`` and its sha256 (and the checkpoint's ``extra`` with ``with_extra``);
    raises CheckpointError on a bad path, a checkpoint that is not a Re-ID model, a config that differs from
    the flags, or bytes that changed since the driver read them. The model is built from exactly the bytes
    that were hashed (one read), so the sha256 always describes the weights in use."""
    from reid.core.models.backbone import REID_FIELDS
    from reid.core.models.checkpoint import model_from_payload, payload_from_bytes

    try:
        data = io.read_bytes(cfg.model)
    except (FileNotFoundError, IsADirectoryError, OSError) as exc:
        raise CheckpointError(f"{cfg.model}: cannot read the model checkpoint ({exc})") from None
    sha256 = hashlib.sha256(data).hexdigest()
    if expected_sha256 and sha256 != expected_sha256:
        raise CheckpointError(f"{cfg.model} changed while the job ran (sha256 {sha256[:12]} != "
                              f"{expected_sha256[:12]})")
    model, model_cfg, extra = model_from_payload(payload_from_bytes(data, cfg.model), cfg.model,
                                                 expected_kind="reid")
    mismatch = [f"{k}: checkpoint {getattr(model_cfg, k)!r} != flag {getattr(cfg, k)!r}" for k in REID_FIELDS
                if getattr(cfg, k) is not None and getattr(cfg, k) != getattr(model_cfg, k)]
    if mismatch:
        raise CheckpointError(f"{cfg.model}: the model does not match the requested config: {mismatch}")
    return (model, sha256, extra) if with_extra else (model, sha256)


def resolve_thresholds(cfg: LabelConfig, extra: dict[str, Any]) -> tuple[LabelConfig, dict[str, str]]:
    """Fill the thresholds the flags left unset from the checkpoint's calibration (fine-tuning chose them on
    the validation sequences), else the paper's 0.82. Returns the config and where each value came from: the
    checkpoint's calibration, ``thresholds_from`` (a sweep file) or "flag", or the default."""
    calibration = extra.get("calibration") or {}
    values, sources = {}, {}
    given = cfg.thresholds_from or "flag"
    for name, key in (("threshold", "threshold"), ("link_threshold", "link_threshold")):
        if getattr(cfg, name) is not None:
            values[name], sources[name] = getattr(cfg, name), given
        elif key in calibration:
            values[name] = float(calibration[key])
            sources[name] = f"checkpoint calibration ({calibration.get('source', 'validation sequences')})"
        else:
            values[name], sources[name] = PAPER_THRESHOLD, "default (the paper's value; the checkpoint has no " \
                                                           "calibration)"
    for name, default in DEFAULT_LINKING.items():
        if getattr(cfg, name) is not None:
            values[name], sources[name] = getattr(cfg, name), given
        elif name in calibration:
            values[name], sources[name] = str(calibration[name]), "checkpoint calibration"
        else:
            values[name], sources[name] = default, "default (how linking worked before it was calibrated)"
    return config.replace(cfg, **values), sources


def check_inputs(cfg: LabelConfig) -> dict[str, Any]:
    """Fail fast, before any work: finished crops, the right instance CSV, a Re-ID model, readable sequences.

    Returns the crop job's parameters plus ``model_sha256`` and ``model_config``.
    """
    committed_crop_files(cfg.crops)
    params = crop_job_params(cfg.crops)
    if cfg.instances and _normpath(cfg.instances) != _normpath(params.get("instances", "")):
        raise ConfigError(f"--instances {cfg.instances} is not the CSV the crops in {cfg.crops} were made from "
                          f"({params.get('instances')})")
    model, sha256, extra = load_reid_model(cfg, with_extra=True)
    sequences, bad = read_label_sequences(cfg, crops_verified=True)
    if cfg.ground_truth and not io.exists(cfg.ground_truth):
        raise DataFormatError(cfg.ground_truth, "ground truth file not found")
    return {**params, "model_sha256": sha256, "model_config": model.config.to_dict(), "model_extra": extra,
            "sequences": sequences, "bad_sequences": bad}


def resolve_model(cfg: LabelConfig) -> tuple[LabelConfig, dict[str, str]]:
    """``--model models:/NAME/VERSION`` (or ``@ALIAS``, or ``runs:/ID/PATH``): the checkpoint downloaded into
    ``<out>/_model/`` (where every labeling actor can read it), and the exact version it is (recorded in the
    run). A plain path is returned unchanged, with no provenance."""
    from reid.runtime import registry
    from reid.runtime.mlflow_store import default_tracking_uri

    if not registry.is_model_uri(cfg.model):
        return cfg, {}
    if io.is_uri(cfg.out):
        raise ConfigError(f"--model {cfg.model} is downloaded next to the output: give a local or shared-filesystem "
                          f"--out, not {cfg.out}")
    path, provenance = registry.resolve_model_uri(cfg.model, default_tracking_uri(cfg.mlflow_uri),
                                                  io.join(cfg.out, "_model"))
    return config.replace(cfg, model=path), provenance


def read_label_sequences(cfg: LabelConfig, crops_verified: bool = False
                         ) -> tuple[list[formats.Sequence], list[formats.BadRow]]:
    """The annotated windows to label (none without ``--sequences``) and the entries left out: a sequence that
    names an instance the crop job never saw, or is malformed, is recorded, not labelled (``--strict``:
    refused)."""
    if not cfg.sequences:
        return [], []
    return formats.read_sequences_checked(cfg.sequences, formats.RowPolicy(cfg.strict, cfg.max_bad_row_fraction),
                                          known_instance_ids(cfg.crops, crops_verified), cfg.window_size)


def _normpath(path: str) -> str:
    return path if io.is_uri(path) else os.path.abspath(os.path.expanduser(path))


def job_identity(cfg: LabelConfig, inputs: dict[str, Any]) -> dict[str, Any]:
    """What must not change between a killed run and its re-run (else the outputs would mix)."""
    keys = ("crops", "sequences", "window_size", "threshold", "metric", "linkage", "link_threshold",
            "max_image_pixels")
    linking = {k: getattr(cfg, k) for k in ("link_distance", "link_constraint")
               if getattr(cfg, k) not in (None, DEFAULT_LINKING[k])}  # an older run's identity stays as it was
    return {**{k: getattr(cfg, k) for k in keys}, "stride": None if cfg.sequences else cfg.stride,
            "model_sha256": inputs["model_sha256"], **linking, **({"corrections": cfg.corrections} if cfg.corrections else {})}
