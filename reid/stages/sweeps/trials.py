"""The Train-in-Tune sweep driver shared by the pretrain and fine-tune sweeps (Ray 2.60: Train V2 + Tune).

Each Tune trial is a small function that launches the job's ``TorchTrainer`` (``run_pretrain`` /
``run_finetune`` with a per-trial ``name`` and a Train ``RunConfig`` holding ``TuneReportCallback``): the
pattern that replaced the deprecated ``Tuner(trainer)``. The callback forwards the report of the first
worker, rank 0, which is the rank that computes the validation metrics (the others report NaN).

Layout under ``<storage>/<sweep name>/``::

    sweep.yaml                   the sweep's config as first launched
    tune/                        the Tune experiment (``Tuner.can_restore`` / ``Tuner.restore``)
    trials/<sweep>-<trial id>/   each trial's Ray Train run; ``final/model.pt`` when it finished
    best.yaml                    the best trial's job config (``jobs/<stage>.py --config best.yaml``)
    summary.csv, summary.md      one row per trial

MLflow: the sweep is a parent run (named after the sweep, its id recorded in the sweep folder's ``_job.json``);
each trial's Train run logs a child run (named after the trial, its id recorded in the trial's run folder).
Re-running the same command resumes: finished trials are kept as they are, unfinished ones continue from their
last Train checkpoint (the interrupted epoch restarts).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ray import tune

from reid.core import config, io
from reid.core.errors import ReidError
from reid.stages.sweeps.summary import write_summary

log = logging.getLogger(__name__)
C = TypeVar("C")
SWEEP_FILE = "sweep.yaml"
SEARCHES = ("optuna", "random")
FAULT_MARKER = "_fault_interrupted"


class SweepInterruptedError(ReidError):
    """The sweep stopped before all its trials finished (Ctrl-C, or injected); re-running resumes it."""


@dataclass(frozen=True)
class SweepSettings:
    """Fields every Tune sweep adds to its job's config; the job's own fields are each trial's base config.

    A sweep's ``name`` is its identity (same name and storage = resume; the MLflow parent run key) and its
    ``workers`` are each trial's Train workers.
    """

    samples: int = field(default=8, metadata={"help": "number of trials (sampled configurations)"})
    max_concurrent_trials: int | None = field(default=None, metadata={
        "help": "trials at once (none = as many as the cluster's CPUs and GPUs fit)"})
    trial_cpus: float = field(default=0.1, metadata={
        "help": "CPUs of each trial's driver function (it only launches and watches its Train run)"})
    search: str = field(default="optuna", metadata={
        "help": "how trials are chosen: optuna (Optuna's TPE, model-based: each trial learns from the finished "
                "ones) or random"})
    search_seed: int = field(default=0, metadata={"help": "seed of the search"})
    grace_period: int = field(default=1, metadata={"help": "ASHA: epochs a trial runs before it may be stopped"})
    reduction_factor: int = field(default=2, metadata={"help": "ASHA: 1/this of the trials go on at each rung"})
    trial_max_failures: int = field(default=1, metadata={"help": "Tune restarts of a trial whose driver failed"})
    controller_failure_limit: int = field(default=2, metadata={
        "help": "Train controller failures tolerated per trial (-1 = unlimited)"})
    fault_after_trials: int = field(default=-1, metadata={
        "help": "fault injection for tests: interrupt the sweep once, as Ctrl-C does, after this many trials"})

    def check_sweep(self) -> None:
        config.check(self.samples >= 1, f"samples must be >= 1, got {self.samples}")
        config.check(self.max_concurrent_trials is None or self.max_concurrent_trials >= 1,
                     f"max_concurrent_trials must be >= 1, got {self.max_concurrent_trials}")
        config.check(self.trial_cpus > 0, f"trial_cpus must be > 0, got {self.trial_cpus}")
        config.check(self.trial_max_failures >= 0, "trial_max_failures must be >= 0")
        config.check(self.search in SEARCHES, f"search must be one of {SEARCHES}, got {self.search!r}")
        epochs = getattr(self, "epochs", 1)
        config.check(1 <= self.grace_period <= epochs,
                     f"grace_period must be in 1..epochs ({epochs}), got {self.grace_period}")
        config.check(self.reduction_factor >= 2, f"reduction_factor must be >= 2, got {self.reduction_factor}")


@dataclass(frozen=True)
class SweepSpec:
    """What differs between the Tune sweeps: the job, how to run it, and what a trial is judged by."""

    stage: str
    job_cls: type
    run_job: Callable[..., Any]  # run_pretrain / run_finetune: (cfg, parent_run_id=, run_config=)
    # the reported metric that scores the model a trial publishes, given the sweep's config: each epoch's
    # report of it describes the model the trial would publish if it ended there (its last epoch's figure for
    # a job that keeps its last epoch, the best so far for one that keeps its best)
    metric_of: Callable[[Any], str]
    mode: str = "max"


@dataclass
class SweepResult:
    folder: str
    rows: list[dict[str, Any]]
    best: dict[str, Any]
    best_config: str
    summary: dict[str, str]
    parent_run_id: str | None


def job_config(cfg: Any, job_cls: type[C], **changes: Any) -> C:
    """The job part of a sweep config (the fields ``job_cls`` has) with ``changes``, validated as the job's."""
    names = {f.name for f in dataclasses.fields(job_cls)}
    values = {k: v for k, v in config.to_dict(cfg).items() if k in names}
    values.update(changes)
    return config.from_dict(job_cls, values, source=f"{job_cls.__name__} of sweep {cfg.name}")


def sweep_folder(storage: str, name: str) -> str:
    return io.join(storage if io.is_uri(storage) else os.path.abspath(storage), name)


def trial_run_name(sweep_name: str, trial_id: str) -> str:
    """The trial's Train run name and MLflow run key: stable across restores (Tune keeps trial ids)."""
    return f"{sweep_name}-{trial_id}"


def concurrent_trials(cluster: dict[str, float], workers: int, cpus_per_worker: float, gpu: bool,
                      data_cpus: float, trial_cpus: float) -> int:
    """How many trials' Train runs fit the cluster at once (at least 1).

    One trial holds its driver function (``trial_cpus``), ``workers`` Train workers and at least one Ray
    Data task or actor (``data_cpus``); with ``gpu`` each worker also holds a GPU.
    """
    # divide, then floor with a tolerance: 16 // 1.6 is 9.0 in floating point
    fits = math.floor(cluster.get("CPU", 0.0) / (trial_cpus + workers * cpus_per_worker + data_cpus) + 1e-9)
    if gpu:
        fits = min(fits, math.floor(cluster.get("GPU", 0.0) / workers + 1e-9))
    return max(1, fits)


def run_trial(params: dict[str, Any], spec: SweepSpec, base: dict[str, Any], sweep_name: str, trials_dir: str,
              parent_run_id: str | None, controller_failure_limit: int) -> None:
    """One Tune trial: the job with this trial's hyperparameters, as a Ray Train run named after the trial."""
    import ray.tune
    from ray.train import FailureConfig
    from ray.tune.integration.ray_train import TuneReportCallback

    from reid.stages.train.ray_config import trainer_run_config

    name = trial_run_name(sweep_name, ray.tune.get_context().get_trial_id())
    cfg = config.from_dict(spec.job_cls, {**base, **params, "name": name, "storage": trials_dir},
                           source=f"trial {name}")
    base_config = trainer_run_config(cfg.name, cfg.storage, cfg.max_failures)
    run_config = dataclasses.replace(
        base_config, failure_config=FailureConfig(max_failures=cfg.max_failures,
                                                  controller_failure_limit=controller_failure_limit),
        callbacks=[*base_config.callbacks, TuneReportCallback()])
    spec.run_job(cfg, parent_run_id=parent_run_id, run_config=run_config)


class InterruptAfterTrials(tune.Callback):
    """Fault injection: interrupt the sweep like Ctrl-C after ``count`` trials finished, once per sweep.

    A marker file in the sweep folder makes it happen once, so the resumed sweep runs to the end (Tune
    restores its callbacks with the experiment).
    """

    def __init__(self, count: int, marker: str) -> None:
        self.count, self.marker, self.finished = count, marker, 0

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.finished += 1
        if self.finished >= self.count and not io.exists(self.marker):
            io.write_text_atomic(self.marker, str(time.time()))
            log.error("fault injection: interrupting the sweep after %d finished trial(s)", self.finished)
            os.kill(os.getpid(), signal.SIGINT)


def asha(cfg: Any) -> Any:
    """ASHA on the reported ``epoch`` (0-based; it survives a resumed Train run, unlike Tune's iteration)."""
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="epoch", max_t=cfg.epochs, grace_period=cfg.grace_period,
                         reduction_factor=cfg.reduction_factor)


def searcher(cfg: Any, max_concurrent: int) -> Any:
    """Optuna's TPE (model-based) or Tune's random search, seeded, at most ``max_concurrent`` trials at once.

    The concurrency limit goes to the search algorithm: Tune ignores ``max_concurrent_trials`` beside one."""
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    if cfg.search == "random":
        return BasicVariantGenerator(random_state=cfg.search_seed, max_concurrent=max_concurrent)
    from optuna.samplers import TPESampler
    from ray.tune.search.optuna import OptunaSearch

    sampler = TPESampler(seed=cfg.search_seed, n_startup_trials=tpe_startup_trials(cfg.samples))
    return ConcurrencyLimiter(OptunaSearch(sampler=sampler), max_concurrent=max_concurrent)


def tpe_startup_trials(samples: int) -> int:
    """Random trials before TPE models the results: a quarter of the budget, 2 to 10. Optuna's default (10)
    would leave a sweep of 8 or 10 trials random from start to end."""
    return min(10, max(2, samples // 4))


def _tuner(cfg: Any, spec: SweepSpec, trainable: Any, param_space: dict[str, Any], folder: str) -> tune.Tuner:
    """A new Tuner, or the interrupted one restored from ``<folder>/tune`` (finished trials are kept; the
    searcher's state is restored with it)."""
    import ray

    experiment = io.join(folder, "tune")
    if tune.Tuner.can_restore(experiment):
        log.info("sweep %s: resuming the Tune experiment in %s", cfg.name, experiment)
        return tune.Tuner.restore(experiment, trainable, resume_unfinished=True)
    base = job_config(cfg, spec.job_cls)
    max_concurrent = cfg.max_concurrent_trials or concurrent_trials(
        ray.cluster_resources(), base.workers, base.cpus_per_worker, base.gpu, base.data_cpus, cfg.trial_cpus)
    callbacks = [InterruptAfterTrials(cfg.fault_after_trials, io.join(folder, FAULT_MARKER))] \
        if cfg.fault_after_trials > 0 else []
    return tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(metric=spec.metric_of(cfg), mode=spec.mode, num_samples=cfg.samples,
                                    scheduler=asha(cfg), search_alg=searcher(cfg, max_concurrent)),
        run_config=tune.RunConfig(name="tune", storage_path=folder, callbacks=callbacks,
                                  failure_config=tune.FailureConfig(max_failures=cfg.trial_max_failures)))


def _launched_samples(cfg: Any, folder: str) -> int:
    """Save the sweep's config at its first launch; on a resume, the number of samples it was launched with."""
    path = io.join(folder, SWEEP_FILE)
    if not io.exists(path):
        config.save_yaml(cfg, path)
        return cfg.samples
    first = config.load_yaml(path)
    changed = sorted(k for k, v in config.to_dict(cfg).items() if first.get(k, v) != v)
    if changed:
        log.warning("sweep %s resumes with its first launch's search space and samples (%s); these "
                    "changed and only apply to trials not yet started: %s", cfg.name, path, changed)
    return int(first.get("samples", cfg.samples))


def run_sweep(cfg: Any, spec: SweepSpec, param_space: dict[str, Any]) -> SweepResult:
    """Run (or resume) a Tune sweep of ``spec.job_cls`` over ``param_space`` (the searcher of ``cfg.search``,
    ASHA early stopping); returns the summary and best.

    Raises :class:`SweepInterruptedError` when the sweep stopped before its trials finished, and
    ReidError when no trial produced the metric.
    """
    from reid.runtime.raycluster import init_ray
    from reid.runtime.tracking import Tracker

    base = job_config(cfg, spec.job_cls)  # a bad job config fails here, before any Ray work
    folder = sweep_folder(cfg.storage, cfg.name)
    init_ray(cfg.ray_address, cfg.ray_num_cpus)
    samples = _launched_samples(cfg, folder)
    # the sweep folder records its parent run: a resumed sweep continues it, another sweep gets its own
    parent = Tracker(cfg.mlflow_uri, cfg.name, cfg.experiment, tags={"reid.stage": f"sweep_{spec.stage}"},
                     spool_dir=None if io.is_uri(folder) else folder, job_folder=folder)
    parent.log_params(config.to_dict(cfg))
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, spec=spec, base=config.to_dict(base), sweep_name=cfg.name,
                             trials_dir=io.join(folder, "trials"), parent_run_id=parent.run_id,
                             controller_failure_limit=cfg.controller_failure_limit),
        {"cpu": cfg.trial_cpus})
    results = _tuner(cfg, spec, trainable, param_space, folder).fit()
    finished = results.num_terminated + results.num_errors
    if finished < max(samples, len(results)):
        parent.set_tags({"reid.sweep_state": f"interrupted after {finished}/{samples} trials"})
        parent.close(status="KILLED")
        raise SweepInterruptedError(f"sweep {cfg.name} stopped after {finished} of {samples} trials; run the "
                                    f"same command again to resume it ({io.join(folder, 'tune')})")
    metric = spec.metric_of(cfg)
    rows = trial_rows(results, metric, cfg, folder, list(param_space))
    best = best_row(rows, spec.mode)
    if best is None:
        parent.close(status="FAILED")
        errors = "; ".join(f"{r['trial']}: {r['error']}" for r in rows if r["error"])
        raise ReidError(f"sweep {cfg.name}: no trial reported {metric} ({errors or 'no errors'}); see "
                        f"{io.join(folder, 'tune')}")
    best_cfg = job_config(cfg, spec.job_cls, name=f"{cfg.name}-best",
                          **{k: best[k] for k in param_space})
    best_config = io.join(folder, "best.yaml")
    config.save_yaml(best_cfg, best_config)
    summary = write_summary(rows, folder, f"{spec.stage} sweep {cfg.name} ({cfg.search} search): score = "
                                          f"{metric} of the model each trial publishes ({spec.mode})")
    _log_parent(parent, rows, best, [best_config, summary["csv"], summary["md"], io.join(folder, SWEEP_FILE)])
    return SweepResult(folder, rows, best, best_config, summary, parent.run_id)


def _log_parent(parent: Any, rows: list[dict[str, Any]], best: dict[str, Any], artifacts: list[str]) -> None:
    parent.log_metrics({"best_score": best["score"], "trials": len(rows),
                        "trials_errored": sum(1 for r in rows if r["status"] == "error")}, step=0)
    parent.set_tags({"reid.best_trial": best["trial"], "reid.best_run": best["run"],
                     "reid.best_model": best["model"], "reid.sweep_state": "finished"})
    for path in artifacts:
        if not io.is_uri(path):
            parent.log_artifact(path, "sweep")
    parent.close()


def trial_rows(results: Any, metric: str, cfg: Any, folder: str, searched: list[str]) -> list[dict[str, Any]]:
    """One summary row per trial: id, status, searched values, score, epochs, run name, model path, error."""
    rows = []
    for result in results:
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or _trial_id_from_path(result.path)
        history = result.metrics_dataframe
        epochs = int(history["epoch"].max()) + 1 if history is not None and "epoch" in history else 0
        run = trial_run_name(cfg.name, trial_id)
        status = "error" if result.error else ("finished" if epochs >= cfg.epochs else "stopped early")
        rows.append({"trial": trial_id, "status": status, **{k: result.config.get(k) for k in searched},
                     "score": published_score(history, metric), "epochs": epochs, "run": run,
                     "model": io.join(folder, "trials", run, "final", "model.pt"),
                     "error": str(result.error).strip().splitlines()[-1][:200] if result.error else ""})
    return sorted(rows, key=lambda r: r["trial"])


def published_score(history: Any, metric: str) -> float:
    """The trial's score: ``metric`` at its last reported epoch (the model it publishes: ``metric`` already
    describes that model, see :class:`SweepSpec`); the last finite value when that epoch did not report it."""
    if history is None or metric not in history:
        return float("nan")
    ordered = history.sort_values("epoch", kind="stable") if "epoch" in history else history
    values = [float(v) for v in ordered[metric] if v is not None and math.isfinite(float(v))]
    return values[-1] if values else float("nan")


def best_row(rows: list[dict[str, Any]], mode: str) -> dict[str, Any] | None:
    """The best row by ``score`` (``mode`` max or min) among the finished trials (they published a model),
    else among those stopped early; None if no score is finite."""
    scored = [r for r in rows if r["status"] != "error" and math.isfinite(r["score"])]
    finished = [r for r in scored if r["status"] == "finished"]
    if not scored:
        return None
    return (max if mode == "max" else min)(finished or scored, key=lambda r: r["score"])


def _trial_id_from_path(path: str) -> str:
    match = re.search(r"_([0-9a-f]{5}_\d{5})(?:_|$)", os.path.basename(str(path)))
    return match.group(1) if match else os.path.basename(str(path))
