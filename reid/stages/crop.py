"""Crop stage: COMICS panels → face and body crops, sharded over Ray, exactly once (docs/ARCHITECTURE.md).

1. *Plan* (driver, streaming): validate the instance CSV chunk by chunk (a malformed CSV fails here, before
   any work) and append each chunk's rows to ``_plan/<shard>/<chunk>.parquet``. A shard is a block of
   ``pages_per_shard`` pages of one series, so every panel of a shard is read and decoded exactly once.
2. *Crop* (Ray Data): one task per pending shard decodes each panel once, crops its boxes, writes the seed's
   file layout and commits the shard's crops and errors (:mod:`reid.core.contracts.manifest`; output contract :mod:`reid.core.contracts.crops`). Committed shards are skipped,
   so a killed job re-run finishes only the rest.
3. *Finalize*: check rows in = crops + errors with unique ids, write ``_SUCCESS``, log counts to MLflow.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field

import pyarrow as pa

from reid.core import config, console, io
from reid.core.contracts.crops import CROP_SCHEMA, crop_relpath, shard_id
from reid.core.contracts.manifest import (
    ShardedOutput,
    ShardSummary,
    error_table,
    summaries_batch,
    table_to_parquet_bytes,
)
from reid.core.data import formats
from reid.core.errors import DataFormatError
from reid.core.geometry import EmptyBoxError, crop_box
from reid.core.images import (
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_PIXELS,
    decode_image,
    encode_jpeg,
    read_image_file,
)
from reid.runtime import faults
from reid.runtime.raycluster import UNIT_RETRIES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CropConfig:
    """Crop every face and body box of a COMICS-format corpus into the seed layout and a Parquet dataset."""

    comics_root: str = field(default="runs/demo/corpus", metadata={"help": "folder holding raw_panel_images/"})
    instances: str = field(default="", metadata={"help": "merged_face_body.csv (default: "
                                                         "<comics_root>/data/ssl/merged_face_body.csv)"})
    out: str = field(default="runs/demo/crops", metadata={"help": "output folder or URI"})
    face_scale: float = field(default=1.2, metadata={"help": "face box scale about its centre"})
    pages_per_shard: int = field(default=16, metadata={"help": "pages of one series per shard"})
    jpeg_quality: int = 95
    max_image_pixels: int = field(default=DEFAULT_MAX_PIXELS, metadata={"help": "decompression-bomb limit"})
    max_image_bytes: int = field(default=DEFAULT_MAX_IMAGE_BYTES,
                                 metadata={"help": "largest panel image file read (checked before reading)"})
    write_files: bool = field(default=True, metadata={"help": "also write the seed's per-crop JPEG layout"})
    num_cpus_per_task: float = field(default=1.0, metadata={"help": "Ray CPUs per crop task"})
    shards_per_task: int = field(default=4, metadata={"help": "most shards one Ray task crops (fewer when the job "
                                                                "is small: >= 4 tasks per CPU)"})
    ray_address: str | None = field(default=None, metadata={"help": "Ray cluster (default: RAY_ADDRESS or local)"})
    ray_num_cpus: int | None = field(default=None, metadata={"help": "CPUs of a locally started Ray"})
    mlflow_uri: str | None = field(default=None, metadata={"help": "tracking URI (default: MLFLOW_TRACKING_URI "
                                                                  "or sqlite runs/mlflow.db)"})
    experiment: str = "comic-reid"
    name: str = field(default="crop", metadata={"help": "the MLflow run's name (a re-run with the same --out "
                                                        "continues its run; another --out is a new run)"})
    strict: bool = config.strict_field("the first bad row of the instance CSV")
    max_bad_row_fraction: float = config.max_bad_fraction_field("the instance CSV")
    unit_retries: int = field(default=UNIT_RETRIES, metadata={"help": "re-runs of a crop task whose process "
                                                                   "died (out of memory, node lost) before the "
                                                                   "job stops and names its shards"})
    fail_after_shards: int = field(default=0, metadata={"help": "fault injection for tests: the driver dies "
                                                                "(os._exit) after committing this many shards"})
    fail_shard: str = field(default="", metadata={"help": "fault injection for tests: the process cropping this "
                                                          "shard dies on every attempt"})

    def __post_init__(self) -> None:
        config.check(self.face_scale > 0, f"face_scale must be > 0, got {self.face_scale}")
        config.check(self.pages_per_shard >= 1, f"pages_per_shard must be >= 1, got {self.pages_per_shard}")
        config.check(1 <= self.jpeg_quality <= 100, f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        config.check(self.max_image_pixels > 0, "max_image_pixels must be > 0")
        config.check(self.max_image_bytes > 0, "max_image_bytes must be > 0")
        config.check(self.num_cpus_per_task > 0, "num_cpus_per_task must be > 0")
        config.check_bad_fraction(self.max_bad_row_fraction)
        config.check(self.shards_per_task >= 1, f"shards_per_task must be >= 1, got {self.shards_per_task}")
        config.check(self.unit_retries >= 0, f"unit_retries must be >= 0, got {self.unit_retries}")

    @property
    def instances_path(self) -> str:
        return self.instances or io.join(self.comics_root, "data", "ssl", "merged_face_body.csv")


def plan_shards(cfg: CropConfig) -> tuple[list[str], int, int, list[formats.BadRow]]:
    """Validate the instance CSV (streaming) and write it, split by shard, under ``<out>/_plan``.

    Returns (sorted shard ids, number of good input rows, number of pages, the bad rows left out). One CSV
    chunk in memory at a time. A bad row raises with ``--strict``; otherwise it is left out and returned, and
    the file is refused only when more than ``max_bad_row_fraction`` of its rows are bad.
    """
    plan_root = io.join(cfg.out, "_plan")
    io.remove_tree(plan_root)  # rebuilt whole: chunks of an earlier plan must never be read with this one
    shards: set[str] = set()
    pages: set[tuple[int, int]] = set()
    rows = 0
    seen_ids: set[str] = set()
    bad: list[formats.BadRow] | None = None if cfg.strict else []
    for chunk_no, chunk in enumerate(formats.iter_instances(cfg.instances_path, bad=bad)):
        chunk = formats.drop_duplicate_instances(chunk, seen_ids, cfg.instances_path, bad)
        rows += len(chunk)
        pages.update(zip(chunk["series_id"].tolist(), chunk["page"].tolist(), strict=True))
        chunk["shard"] = [shard_id(s, p, cfg.pages_per_shard) for s, p in zip(chunk["series_id"], chunk["page"],
                                                                                strict=True)]
        for shard, part in chunk.groupby("shard", sort=False):
            shards.add(str(shard))
            table = pa.Table.from_pandas(part.reset_index(drop=True), preserve_index=False)
            io.write_bytes_atomic(io.join(plan_root, str(shard), f"{chunk_no:06d}.parquet"),
                                  table_to_parquet_bytes(table))
    bad = bad or []
    try:
        formats.RowPolicy(cfg.strict, cfg.max_bad_row_fraction).check(cfg.instances_path, bad, rows + len(bad))
    except DataFormatError:
        io.remove_tree(plan_root)
        raise
    return sorted(shards), rows, len(pages), bad


def _read_plan(cfg: CropConfig, shard: str) -> pa.Table:
    folder = io.join(cfg.out, "_plan", shard)
    tables = [io.read_parquet(io.join(folder, name)) for name in io.list_files(folder, ".parquet")]
    return pa.concat_tables(tables)


def crop_shard(cfg: CropConfig, shard: str) -> ShardSummary:
    """Crop every box of one shard and commit it. Idempotent: safe to run again after a failure."""
    output = ShardedOutput(cfg.out, "instance_id")
    if output.is_committed(shard):
        return output.committed()[shard]
    faults.worker_dies_on(shard, cfg.fail_shard)
    plan = _read_plan(cfg, shard).to_pylist()
    by_panel: dict[str, list[dict]] = defaultdict(list)
    for row in plan:
        by_panel[row["panel_id"]].append(row)
    crops: list[dict] = []
    errors: list[dict] = []
    for panel_id, boxes in sorted(by_panel.items()):
        source = formats.panel_image_path(cfg.comics_root, panel_id)
        try:
            data = read_image_file(source, cfg.max_image_bytes, inside=_corpus_folders(cfg), what="panel image")
            image = decode_image(data, source, cfg.max_image_pixels)
        except DataFormatError as exc:
            errors += [_error(b, shard, source, exc.reason) for b in boxes]
            continue
        width, height = image.size
        for b in boxes:
            try:
                box = crop_box(b["type"], b["x_0"], b["y_0"], b["x1"], b["y_1"], width, height, cfg.face_scale)
            except EmptyBoxError as exc:
                errors.append(_error(b, shard, source, str(exc)))
                continue
            data = encode_jpeg(image.crop(box), cfg.jpeg_quality)
            if cfg.write_files:
                io.write_bytes_atomic(io.join(cfg.out, crop_relpath(b["type"], b["series_id"], b["page"],
                                                                    b["panel"], b["index"])), data)
            crops.append({"instance_id": b["instance_id"], "panel_id": panel_id, "series_id": b["series_id"],
                          "page": b["page"], "panel": b["panel"], "type": b["type"], "index": b["index"],
                          "char_index": b["char_index"], "box": list(box), "width": box[2] - box[0],
                          "height": box[3] - box[1], "image": data, "shard": shard})
    return output.commit(shard, pa.Table.from_pylist(crops, schema=CROP_SCHEMA), error_table(errors),
                         input_rows=len(plan))


def _corpus_folders(cfg: CropConfig) -> list[str]:
    """Where a panel image may lie once symlinks are resolved: the corpus, or wherever its raw_panel_images/
    folder itself points (a corpus assembled from links); never elsewhere (a link to /dev/zero or /etc)."""
    return [cfg.comics_root, io.join(cfg.comics_root, "raw_panel_images")]


def _error(box: dict, shard: str, source: str, reason: str) -> dict[str, str]:
    return {"id": box["instance_id"], "shard": shard, "stage": "crop", "source": source, "reason": reason}


def _crop_batch(batch: dict, cfg: CropConfig) -> dict:
    summaries = [crop_shard(cfg, str(s)) for s in batch["shard"]]
    faults.pause_before_commit(cfg.fail_after_shards)
    return summaries_batch(summaries)


def shards_per_ray_task(cfg: CropConfig, pending: int, cpus: float) -> int:
    """Shards per Ray task: up to ``shards_per_task`` (fewer, larger tasks cost less scheduling), but at least
    four tasks per CPU so the work stays balanced and the progress bar moves."""
    return max(1, min(cfg.shards_per_task, pending // max(1, int(4 * cpus))))


def run_crop(cfg: CropConfig) -> dict:
    """Run the crop stage end to end; returns the totals written to ``<out>/_SUCCESS``."""
    from reid.runtime.raycluster import init_ray
    from reid.runtime.tracking import open_tracker

    images = io.join(cfg.comics_root, "raw_panel_images")
    if not io.is_dir(images):
        raise DataFormatError(cfg.comics_root, "no raw_panel_images/ folder here: is --comics-root the corpus root "
                              "(the folder that holds raw_panel_images/ and data/)?")
    if not io.exists(cfg.instances_path):
        raise DataFormatError(cfg.instances_path, "instance CSV not found (--instances)")
    output = ShardedOutput(cfg.out, "instance_id")
    output.bind_job({"comics_root": cfg.comics_root, "instances": cfg.instances_path,
                     "face_scale": cfg.face_scale, "pages_per_shard": cfg.pages_per_shard,
                     "jpeg_quality": cfg.jpeg_quality, "instances_fingerprint": io.fingerprint(cfg.instances_path)})
    start = time.time()
    tracker = open_tracker(cfg.mlflow_uri, cfg.name, cfg.experiment, tags={"reid.stage": "crop"},
                           spool_dir=cfg.out if not io.is_uri(cfg.out) else None, job_folder=cfg.out)
    shards, input_rows, pages, bad_rows = plan_shards(cfg)
    console.open_log()  # the input is checked: from here on the job writes, its log file included
    output.write_input_errors(error_table([b.as_error("input") for b in bad_rows]))
    if bad_rows:
        log.warning("crop: %d bad row(s) of %s left out and recorded in %s (first: %s: %s)", len(bad_rows),
                    cfg.instances_path, output.input_errors_path(), bad_rows[0].where, bad_rows[0].reason)
    done = output.committed()
    pending = [s for s in shards if s not in done]
    log.info("crop: %d shards (%d already committed), %d boxes on %d pages", len(shards), len(done), input_rows,
             pages)
    init_ray(cfg.ray_address, cfg.ray_num_cpus)
    committed_now, crops = _crop_pending(cfg, output, shards, pending, done, input_rows) if pending else (0, 0)
    elapsed = time.time() - start
    totals = output.finalize(shards, expected_input_rows=input_rows,
                             extra={"seconds_last_run": round(elapsed, 3), "shards_this_run": committed_now})
    metrics = {"boxes": totals["input_rows"], "crops": totals["rows"], "errors": totals["error_rows"],
               "bad_input_rows": totals["input_error_rows"],
               "pages": pages, "seconds": elapsed, "crops_per_s": crops / elapsed if elapsed else 0.0}
    tracker = tracker.result()
    tracker.log_params({**config.to_dict(cfg), "shards": len(shards), "input_rows": input_rows})
    tracker.log_metrics(metrics, step=0)
    tracker.close()
    return totals


def _crop_pending(cfg: CropConfig, output: ShardedOutput, shards: list[str], pending: list[str],
                  done: dict[str, ShardSummary], input_rows: int) -> tuple[int, int]:
    """Crop the uncommitted shards in Ray tasks, a bar counting boxes; returns (shards committed, crops). A
    shard whose process died more than ``--unit-retries`` times stops the job with a WorkUnitLostError."""
    import ray
    from tqdm import tqdm

    from reid.runtime.raycluster import TASK_POOL_OVERRIDES, data_context, task_retry_args, work_unit_lost

    committed_now = crops = errors = 0
    per_task = shards_per_ray_task(cfg, len(pending), ray.cluster_resources().get("CPU", 1))
    with data_context(**TASK_POOL_OVERRIDES):
        ds = ray.data.from_items([{"shard": s} for s in pending],
                                 override_num_blocks=math.ceil(len(pending) / per_task))
        ds = ds.map_batches(_crop_batch, fn_kwargs={"cfg": cfg}, batch_size=per_task,
                            num_cpus=cfg.num_cpus_per_task, **task_retry_args(cfg.unit_retries))
    bar = tqdm(total=input_rows, initial=sum(s.input_rows for s in done.values()), unit="box",
               desc="crop", smoothing=0.1)
    try:
        for row in ds.iter_rows():
            committed_now += 1
            crops += row["rows"]
            errors += row["error_rows"]
            bar.update(row["input_rows"])
            bar.set_postfix(shards=f"{len(done) + committed_now}/{len(shards)}", errors=errors)
            faults.driver_exit_after(committed_now, cfg.fail_after_shards)
    except Exception as exc:
        lost = work_unit_lost(exc, "crop", cfg.unit_retries, [s for s in pending if not output.is_committed(s)])
        if lost is None:
            raise
        raise lost from exc
    finally:
        bar.close()
    return committed_now, crops
