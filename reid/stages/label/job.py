"""The label job's driver: checks, pass 1 (windows), pass 2 (series), finish (counts, evaluation, report, MLflow)."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from reid.core import config, console, io
from reid.core.contracts.crops import (
    crops_fingerprint,
    crops_output,
)
from reid.core.contracts.labels import (
    QUALITY_FILE,
    labels_output,
    windows_output,
)
from reid.core.contracts.manifest import error_table
from reid.stages.label.config import (
    LabelConfig,
    check_inputs,
    job_identity,
    resolve_model,
    resolve_thresholds,
)
from reid.stages.label.corrected import prepare_corrections, record_applied, run_corrected_series_pass
from reid.stages.label.evaluate import evaluate
from reid.stages.label.plan import plan_items
from reid.stages.label.series import run_series_pass
from reid.stages.label.windows import run_windows_pass

log = logging.getLogger(__name__)


def run_label(cfg: LabelConfig, report_writer: Callable[..., str] | None = None) -> dict[str, Any]:
    """Run the label stage end to end (see the package doc); returns totals, metrics and the report path.

    ``report_writer`` draws the visual report once the output is complete (``jobs/label.py`` passes
    :func:`reid.stages.report.write_report`; the report is its own stage and reads only the labels contract):
    ``report_writer(labels_root, crops_root, comics_root, out_dir, windows, series, members) -> index.html``.
    """
    from reid.runtime.mlflow_store import ui_hint
    from reid.runtime.raycluster import init_ray

    cfg, model_source = resolve_model(cfg)  # models:/ or runs:/ → the checkpoint file, and which version it is
    inputs = check_inputs(cfg)
    console.open_log()  # the inputs are checked: from here on the job writes, its log file included
    cfg, threshold_sources = resolve_thresholds(cfg, inputs["model_extra"])
    log.info("label: window threshold %.3g (%s), link threshold %.3g (%s)", cfg.threshold,
             threshold_sources["threshold"], cfg.link_threshold, threshold_sources["link_threshold"])
    corrections = prepare_corrections(cfg) if cfg.corrections else None  # before anything is written
    identity = _bind_outputs(cfg, inputs)
    items = plan_items(cfg, crops_output(cfg.crops), inputs["pages_per_shard"], inputs["sequences"])
    _record_bad_sequences(cfg, inputs["bad_sequences"])
    shards = [i["shard"] for i in items]
    start = time.time()
    tracker = _open_tracker(cfg, inputs, identity, len(shards), model_source, threshold_sources)
    model_id = {"model": cfg.model, "model_sha256": inputs["model_sha256"], "run_id": tracker.run_id or ""}
    init_ray(cfg.ray_address, cfg.ray_num_cpus)
    counts = run_windows_pass(cfg, items, model_id, inputs["model_config"], inputs["pages_per_shard"], tracker)
    one_window_per_box = not cfg.sequences and cfg.stride == cfg.window_size
    expected = json.loads(io.read_text(io.join(cfg.crops, "_SUCCESS")))["input_rows"] if one_window_per_box \
        else None
    windows_output(cfg.out).finalize(shards, expected_input_rows=expected)
    if corrections is not None:
        run_corrected_series_pass(cfg, shards, corrections)
    else:
        run_series_pass(cfg, shards)  # each final shard is checked for cannot-link as it is committed
    elapsed = time.time() - start
    totals = labels_output(cfg.out).finalize(shards, expected_input_rows=expected, extra={
        "seconds_last_run": round(elapsed, 3), "shards_this_run": counts["shards"]})
    metrics = _job_metrics(totals, counts, elapsed, len(inputs["bad_sequences"]))
    if corrections is not None:
        metrics.update(record_applied(cfg, corrections))
    scores, per_series = evaluate(cfg, inputs["sequences"])
    metrics.update(scores)
    metrics.update(model_source)  # which registered model version was used, when --model was an MLflow URI
    metrics.update(threshold=cfg.threshold, link_threshold=cfg.link_threshold, link_distance=cfg.link_distance,
                   link_constraint=cfg.link_constraint,
                   **{f"{k}_source": v for k, v in threshold_sources.items()})
    plot = _write_quality(cfg, per_series)
    io.write_text_atomic(io.join(cfg.out, "metrics.json"), json.dumps(metrics, indent=1, sort_keys=True))
    report = None
    if cfg.report_windows and report_writer is not None:
        report = report_writer(cfg.out, cfg.crops, cfg.comics_root or inputs.get("comics_root", ""),
                               io.join(cfg.out, "report"), cfg.report_windows, cfg.report_series,
                               cfg.report_members)
    _close_tracker(cfg, tracker, metrics, plot, report)
    return {"totals": totals, "metrics": metrics, "report": report, "run_id": tracker.run_id,
            "tracking_uri": tracker.uri, "mlflow_ui": ui_hint(tracker.uri, tracker.experiment_id, tracker.run_id)}


def _bind_outputs(cfg: LabelConfig, inputs: dict[str, Any]) -> dict[str, Any]:
    """Bind both outputs to what this job is (a re-run with other inputs is refused); returns that identity."""
    identity = job_identity(cfg, inputs)  # its model by sha256; its sequences by contents, not path, too:
    identity.update({"sequences_fingerprint": io.fingerprint(cfg.sequences)} if cfg.sequences else {})
    identity["crops_fingerprint"] = crops_fingerprint(cfg.crops)  # re-cropped in place: not the same input
    windows_output(cfg.out).bind_job(identity)
    labels_output(cfg.out).bind_job(identity)
    return identity


def _record_bad_sequences(cfg: LabelConfig, bad: list) -> None:
    final = labels_output(cfg.out)
    final.write_input_errors(error_table([b.as_error("input") for b in bad]))
    if bad:
        log.warning("label: %d sequence(s) of %s left out and recorded in %s (first: %s: %s)", len(bad),
                    cfg.sequences, final.input_errors_path(), bad[0].where, bad[0].reason)


def _open_tracker(cfg: LabelConfig, inputs: dict[str, Any], identity: dict[str, Any], shards: int,
                  model_source: dict[str, str], threshold_sources: dict[str, str]):
    """One MLflow run per label job: a new one, unless this re-run resumes the same --out (recorded in its
    _job.json); the inputs, parameters and model provenance logged."""
    from reid.runtime.run_inputs import crops_dataset, sequences_dataset
    from reid.runtime.tracking import Tracker

    tracker = Tracker(cfg.mlflow_uri, cfg.name, cfg.experiment, tags={"reid.stage": "label"},
                      spool_dir=cfg.out if not io.is_uri(cfg.out) else None, job_folder=cfg.out)
    tracker.log_inputs([(crops_dataset(cfg.crops, identity["crops_fingerprint"]), "labeling"),
                        *([(sequences_dataset(cfg.sequences), "labeling")] if cfg.sequences else [])])
    tracker.log_params({**config.to_dict(cfg), "model_sha256": inputs["model_sha256"],
                        "shards": shards,
                        **{f"model_{k}": v for k, v in inputs["model_config"].items()},
                        **{f"{k}_source": v for k, v in threshold_sources.items()},
                        **({"model": model_source["model_uri"]} if model_source else {})})
    if model_source:
        tracker.set_tags({f"reid.{k}": v for k, v in model_source.items()})
    return tracker


def _job_metrics(totals: dict[str, Any], counts: dict[str, Any], elapsed: float, bad_sequences: int
                 ) -> dict[str, Any]:
    seconds = counts["seconds"]
    return {"rows": totals["rows"], "unassigned": totals["error_rows"], "shards": totals["shards"],
            "seconds": elapsed, "shards_this_run": counts["shards"], "embed_seconds": seconds,
            "instances_per_s": (counts["rows"] + counts["errors"]) / seconds if seconds else 0.0,
            "steady_instances_per_s": counts.get("steady_instances_per_s", 0.0),
            "first_result_seconds": counts.get("first_result_seconds", 0.0), "bad_sequences": bad_sequences,
            "cannot_link_checked_rows": totals["rows"]}  # each final shard was checked as it was committed


def _write_quality(cfg: LabelConfig, per_series: list[dict[str, float]] | None) -> str | None:
    """The per-series quality file and its plot (with a ground-truth CSV); returns the plot's path."""
    from reid.core.plots import identities_png  # matplotlib: only when there is something to plot

    if per_series is None:
        return None
    io.write_text_atomic(io.join(cfg.out, QUALITY_FILE), json.dumps(per_series, indent=1))
    plot = io.join(cfg.out, "identities_per_series.png")
    io.write_bytes_atomic(plot, identities_png(per_series, "identities per series: found vs ground truth"))
    return plot


def _close_tracker(cfg: LabelConfig, tracker: Any, metrics: dict[str, Any], plot: str | None,
                   report: str | None) -> None:
    tracker.log_metrics({k: v for k, v in metrics.items() if isinstance(v, int | float)}, step=0)
    if not io.is_uri(cfg.out):
        tracker.log_artifact(io.join(cfg.out, "metrics.json"))
        if plot:
            tracker.log_artifact(plot, "plots")
        if report:
            tracker.log_artifact(os.path.dirname(report), "report")
    tracker.close()
