"""MLflow tracking that never kills a job.

Only rank 0 / the driver creates a :class:`Tracker`. Every call is best-effort: if the tracking server is
down, the operation is buffered and retried on the next call and at :meth:`Tracker.close`; what still
cannot be logged is written to a local JSONL file and reported in a warning, so nothing is silently lost.

A buffered operation is also appended at once to the tracker's journal (:mod:`reid.runtime.unlogged`), which is
removed once the buffer drains: a process that dies during an outage (a training worker whose node is lost) leaves
its operations there. The next tracker of the same run key to close in that folder (the training driver, after its
workers) adopts such journals: it sends what belongs to its run, else spools it.

One job invocation is one MLflow run. A run is found by its id, never by its name: a tracker given ``run_id``
continues exactly that run, and one given ``job_folder`` (the job's output folder) continues the run recorded in
that folder's ``_job.json`` for this tracking URI (:func:`reid.core.contracts.manifest.record_run`), so that a job
resuming its own output continues its own run; any other tracker starts a new run (and records it there). The
job's ``name`` is the run's name and its ``reid.run_key`` tag, for people. A continued run keeps its params
(re-logging the same value is a no-op) and skips metric steps it already has, because MLflow params are immutable
and metric history is append-only.

A tracker also logs the datasets a run read as its inputs (:meth:`Tracker.log_inputs`, described by
:mod:`reid.runtime.run_inputs`) and the host's CPU, memory and GPU use as the run's system metrics
(:meth:`Tracker.monitor_system`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
import uuid
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from reid.core.errors import ConfigError
from reid.runtime import unlogged
from reid.runtime.mlflow_store import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    default_tracking_uri,
    local_artifact_location,
    make_client,
)

log = logging.getLogger(__name__)

RUN_KEY_TAG = "reid.run_key"
DEFAULT_EXPERIMENT = "comic-reid"
_OPEN_TRACKERS: weakref.WeakValueDictionary[str, Tracker] = weakref.WeakValueDictionary()  # token -> tracker


def _refused(exc: BaseException) -> bool:
    """Whether MLflow answered with 401 or 403: the server is up and says no to these credentials."""
    return getattr(exc, "error_code", None) in ("UNAUTHENTICATED", "PERMISSION_DENIED")


class Tracker:
    """A resilient handle on one MLflow run.

    ``run_id``: continue exactly that run. ``job_folder``: the output folder of the job this run tracks; the run
    recorded there for this tracking URI is continued, and a new run is recorded there. Without either, a new
    run. ``mark_resumed`` tags a continued run ``reid.resumed`` (False for a process that is part of the same
    attempt, such as a training driver after its workers, or a spool replay).
    """

    def __init__(self, uri: str | None, run_key: str, experiment: str = DEFAULT_EXPERIMENT,
                 run_name: str | None = None, tags: dict[str, str] | None = None,
                 parent_run_id: str | None = None, spool_dir: str | None = None, mark_resumed: bool = True,
                 *, run_id: str | None = None, job_folder: str | None = None) -> None:
        self.uri = default_tracking_uri(uri)
        self.mark_resumed = mark_resumed
        self.run_key = run_key
        self.experiment = experiment
        self.run_name = run_name or run_key
        self.tags = dict(tags or {})
        self.parent_run_id = parent_run_id
        self.requested_run_id = run_id
        self.job_folder = job_folder
        # absolute: the warning must say where the file is (a Ray worker runs in a session temp dir)
        self.spool_path = os.path.abspath(os.path.join(spool_dir or ".", f"mlflow_unlogged_{run_key}.jsonl"))
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.resumed = False
        self._token = uuid.uuid4().hex  # groups this tracker's spooled operations when it never had a run id
        self.journal_path = unlogged.journal_path(self.spool_path, self._token)
        _OPEN_TRACKERS[self._token] = self
        self._pending: list[tuple[str, tuple, dict]] = []
        self._journalled = 0  # how many of the first pending operations the journal already holds
        self._journal_exists = False
        self._journal_warned = False
        self._logged_steps: dict[str, set[int]] = {}  # metric key -> steps the run has
        self._params: dict[str, str] = {}
        self._warned = False
        self._next_retry = 0.0
        self._client = None
        self._monitor = None
        self._try(self._open, first=True)

    # -- plumbing -------------------------------------------------------------------------------------
    def _try(self, fn: Callable[[], Any], first: bool = False) -> bool:
        try:
            fn()
            return True
        except Exception as exc:  # noqa: BLE001 - MLflow being down must never kill the job
            if first and _refused(exc):  # a wrong password is a config error, not an outage: stop before work
                raise ConfigError(f"MLflow at {self.uri} refused this job's credentials ({exc.error_code}): set "
                                  f"MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (a local cluster's env "
                                  f"file exports them)") from None
            self._next_retry = time.monotonic() + 15.0
            if not self._warned:
                log.warning("MLflow at %s unavailable (%s: %s); buffering and retrying", self.uri,
                            type(exc).__name__, str(exc).splitlines()[0][:200])
                self._warned = True
            return False

    def _run_to_continue(self, client: Any) -> Any | None:
        """The run this tracker continues (the requested one, else the one its job folder records), or None for a
        new run. A recorded run that this store does not have (deleted, or a store rebuilt) is replaced."""
        from mlflow.exceptions import MlflowException

        from reid.core.contracts.manifest import recorded_run

        run_id = self.requested_run_id or (recorded_run(self.job_folder, self.uri) if self.job_folder else None)
        if not run_id:
            return None
        try:
            run = client.get_run(run_id)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            run = None
        if run is None or run.info.lifecycle_stage == "deleted":
            log.warning("MLflow at %s has no run %s (deleted?); starting a new run for %s", self.uri, run_id,
                        self.run_key)
            return None
        return run

    def _open(self) -> None:
        client = self._client or make_client(self.uri)
        self._client = client
        run = self._run_to_continue(client)
        if run is not None:
            self.experiment_id = run.info.experiment_id
            self._params = dict(run.data.params)
            for key in run.data.metrics:
                history = client.get_metric_history(run.info.run_id, key)
                self._logged_steps[key] = {m.step for m in history}
            if run.info.status != "RUNNING":
                client.update_run(run.info.run_id, status="RUNNING")
            self.run_id = run.info.run_id
            self.resumed = True
            tags = {**self.tags, **({"reid.resumed": "true"} if self.mark_resumed else {})}
        else:
            exp = client.get_experiment_by_name(self.experiment)
            exp_id = exp.experiment_id if exp else client.create_experiment(
                self.experiment, artifact_location=local_artifact_location(self.uri),
                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
            if exp and exp.tags.get(EXPERIMENT_KIND_TAG) is None:
                client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            self.experiment_id = exp_id
            tags = {**self.tags, RUN_KEY_TAG: self.run_key, "mlflow.runName": self.run_name}
            if self.parent_run_id:
                tags["mlflow.parentRunId"] = self.parent_run_id
            self.run_id = client.create_run(exp_id, tags=tags, run_name=self.run_name).info.run_id
        for k, v in tags.items():
            client.set_tag(self.run_id, k, v)
        if self.job_folder:
            self._record()

    def _record(self) -> None:
        from reid.core.contracts.manifest import record_run

        try:
            record_run(self.job_folder, self.uri, self.run_id)
        except Exception as exc:  # noqa: BLE001 - the run exists; a re-run would only start another one
            log.warning("could not record MLflow run %s in %s (%s: %s): a re-run will start a new run",
                        self.run_id, self.job_folder, type(exc).__name__, str(exc)[:200])

    def _call(self, method: str, *args: Any, **kwargs: Any) -> None:
        self._pending.append((method, args, kwargs))
        self.flush(final=False)
        self._journal()

    def flush(self, final: bool = False) -> bool:
        """Send buffered operations; returns True when nothing is left."""
        if not final and time.monotonic() < self._next_retry:
            return False  # the server failed recently: don't stall the job on every call
        if self.run_id is None and not self._try(self._open):
            return False
        while self._pending:
            method, args, kwargs = self._pending[0]
            if not self._try(functools.partial(getattr(self, method), *args, **kwargs)):
                return False
            self._pending.pop(0)
            self._journalled = max(0, self._journalled - 1)
        self._drop_journal()
        return True

    def _journal(self) -> None:
        """Append the buffered operations the journal does not hold yet (an outage): a process that dies now
        loses none of them. Operations sent since stay in it until the buffer drains: replaying one twice is
        harmless (steps and params already logged are skipped)."""
        new = self._pending[self._journalled:]
        if not new:
            return
        try:
            unlogged.append_entries(self.journal_path, (unlogged.writer(self._spool_entry(*op)) for op in new))
            self._journalled, self._journal_exists = len(self._pending), True
        except OSError as exc:  # the buffer still holds them; only a crash would lose them now
            if not self._journal_warned:
                log.warning("cannot journal unlogged MLflow operations to %s (%s); they are kept in memory",
                            self.journal_path, exc)
                self._journal_warned = True

    def _drop_journal(self) -> None:
        self._journalled = 0
        if not self._journal_exists:
            return
        self._journal_exists = False
        try:
            os.remove(self.journal_path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not remove %s (%s): its operations were logged, a replay would skip them",
                        self.journal_path, exc)

    def _adopt_orphans(self) -> list[dict[str, Any]]:
        """Journals that other trackers of this run key left in this folder (their process ended without closing
        them): operations of this tracker's run join its buffer, before its end; the others are returned, to be
        spooled as they are. The journals are removed (their operations are in the buffer or returned). A journal
        whose tracker still runs (on this host: its process, or an open tracker of this process) is left alone;
        one written on another host is adopted (a run's trackers there have ended when the next one closes)."""
        others: list[dict[str, Any]] = []
        run_id = self._known_run_id()
        for path in unlogged.orphan_journals(self.spool_path, self.journal_path):
            try:
                entries = unlogged.read_entries(path)
            except (OSError, ValueError) as exc:
                log.warning("cannot read the MLflow journal %s (%s); left in place, replay it by hand", path, exc)
                continue
            if entries and unlogged.writer_alive(entries[0], _OPEN_TRACKERS):
                continue
            for e in entries:
                if not (run_id and e.get("run_id") == run_id):
                    others.append(e)
                elif e["op"] != "_end_op":  # the run ends once, with this tracker's status
                    self._pending.append((e["op"], tuple(e["args"]), e["kwargs"]))
            log.warning("MLflow: adopted %d operation(s) that a tracker of %s left in %s (its process ended "
                        "without closing it)", len(entries), self.run_key, path)
            os.remove(path)
        return others

    # -- operations (run against the server; called through _call) -------------------------------------
    def _params_op(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        new = {k: v for k, v in params.items() if k not in self._params}
        for k, v in params.items():
            if k in self._params and self._params[k] != v:
                log.warning("param %s already logged as %r; keeping it (new value %r)", k, self._params[k], v)
        if new:
            self._client.log_batch(self.run_id, params=[Param(k, v) for k, v in new.items()])
            self._params.update(new)

    def _metrics_op(self, metrics: dict[str, float], step: int, timestamp: int, model_id: str | None = None,
                    dataset: dict[str, str] | None = None) -> None:
        from mlflow.entities import Metric

        linked = {"model_id": model_id, "dataset_name": (dataset or {}).get("name"),
                  "dataset_digest": (dataset or {}).get("digest")}
        # a model's metrics are its own: a new model logs them even at a step the run already has
        seen = {k: (f"{model_id}/{k}" if model_id else k) for k in metrics}
        todo = [Metric(k, float(v), timestamp, step, **linked) for k, v in metrics.items()
                if step not in self._logged_steps.get(seen[k], ())]
        if todo:
            self._client.log_batch(self.run_id, metrics=todo)
            for m in todo:
                self._logged_steps.setdefault(seen[m.key], set()).add(step)
                self._logged_steps.setdefault(m.key, set()).add(step)

    def _inputs_op(self, inputs: list[dict[str, Any]]) -> None:
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        self._client.log_inputs(self.run_id, datasets=[
            DatasetInput(Dataset(**item["dataset"]), tags=[InputTag(MLFLOW_DATASET_CONTEXT, item["context"])])
            for item in inputs])

    def _artifact_op(self, local_path: str, artifact_path: str | None) -> None:
        if os.path.isdir(local_path):
            self._client.log_artifacts(self.run_id, local_path, artifact_path)
        else:
            self._client.log_artifact(self.run_id, local_path, artifact_path)

    def _tags_op(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self._client.set_tag(self.run_id, k, v)

    def _end_op(self, status: str) -> None:
        self._client.set_terminated(self.run_id, status=status)

    # -- public API -------------------------------------------------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        self._call("_params_op", {k: str(v)[:6000] for k, v in params.items()})

    def log_metrics(self, metrics: dict[str, float], step: int, model_id: str | None = None,
                    dataset: dict[str, str] | None = None) -> None:
        """Log ``metrics`` at an explicit ``step``; steps already in the run's history are skipped.

        ``model_id`` (a logged model's id, MLflow 3) makes them that model's metrics too, as its model page shows
        them (a new model logs them even at a step the run already has); ``dataset`` (a :mod:`reid.runtime.run_inputs`
        dataset, logged as an input) says what they were measured on."""
        self._call("_metrics_op", dict(metrics), int(step), int(time.time() * 1000), model_id,
                   {"name": dataset["name"], "digest": dataset["digest"]} if dataset else None)

    def log_inputs(self, inputs: list[tuple[dict[str, str] | None, str]]) -> None:
        """Log datasets the run read, each with its context (``training``, ``validation``, ``testing``,
        ``labeling``): ``(dataset, context)`` pairs of :mod:`reid.runtime.run_inputs` datasets; None (a dataset that could
        not be described) is left out."""
        items = [{"dataset": dataset, "context": context} for dataset, context in inputs if dataset]
        if items:
            self._call("_inputs_op", items)

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        self._call("_artifact_op", local_path, artifact_path)

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._call("_tags_op", {k: str(v) for k, v in tags.items()})

    def monitor_system(self, sampling_interval: float = 10.0) -> bool:
        """Log this host's CPU and memory use (and each NVIDIA GPU's, with ``nvidia-ml-py``) as the run's system
        metrics (``system/...``) until :meth:`close`, with MLflow's own monitor on this run's id (it needs no
        active fluent run). A continued run continues their steps. Best-effort: returns False, with a warning,
        when it cannot start (no run yet because MLflow is down, no ``psutil``)."""
        if self._monitor is not None:
            return True
        if self.run_id is None:
            log.warning("MLflow at %s unavailable: no system metrics for this run", self.uri)
            return False
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(self.run_id, sampling_interval=sampling_interval, resume_logging=True,
                                           tracking_uri=self.uri)
            monitor.start()
        except Exception as exc:  # noqa: BLE001 - system metrics are a nicety, never a reason to stop
            log.warning("no system metrics for MLflow run %s (%s: %s)", self.run_id, type(exc).__name__,
                        str(exc)[:200])
            return False
        self._monitor = monitor
        return True

    def _stop_monitor(self) -> None:
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            try:
                monitor.finish()
            except Exception as exc:  # noqa: BLE001 - its last samples only
                log.warning("system metrics monitor did not stop cleanly (%s: %s)", type(exc).__name__, exc)

    def metric_history(self, keys: list[str]) -> dict[str, list[tuple[int, float]]]:
        """The logged (step, value) history of each of ``keys`` that has one (for plots); {} while MLflow is
        unavailable."""
        out: dict[str, list[tuple[int, float]]] = {}

        def read() -> None:
            for key in keys:
                history = self._client.get_metric_history(self.run_id, key)
                if history:
                    out[key] = sorted((m.step, m.value) for m in history)

        if self.run_id and self._client is not None:
            self._try(read)
        return out

    def _known_run_id(self) -> str | None:
        """The run this tracker logs into, also when MLflow was down from its start: the run it was asked to
        continue, or the one recorded in its job folder; None for a run never created."""
        if self.run_id or self.requested_run_id or not self.job_folder:
            return self.run_id or self.requested_run_id
        from reid.core.contracts.manifest import recorded_run

        try:
            return recorded_run(self.job_folder, self.uri)
        except (OSError, ValueError):  # an unreadable record: replay starts a new run, as for none
            return None

    def _spool_entry(self, method: str, args: tuple, kwargs: dict) -> dict[str, Any]:
        """One spooled operation, with everything :func:`replay` needs to send it where it belonged: the run id
        (None when the run was never created), the store, experiment and job folder, and the new run's name and
        tags."""
        return {"run_key": self.run_key, "run_id": self._known_run_id(), "uri": self.uri, "experiment": self.experiment,
                "run_name": self.run_name, "tags": self.tags, "parent_run_id": self.parent_run_id,
                "job_folder": self.job_folder, "tracker": self._token, "op": method, "args": args,
                "kwargs": kwargs}

    def close(self, status: str = "FINISHED", retries: int = 3, backoff_s: float = 2.0) -> list[str]:
        """End the run. Retries buffered operations (with those of journals that dead trackers of this run key
        left, :meth:`_adopt_orphans`); returns (and spools to disk) what could not be logged."""
        self._stop_monitor()
        foreign = self._adopt_orphans()
        self._pending.append(("_end_op", (status,), {}))
        self._journal()
        for attempt in range(retries):
            if self.flush(final=True):
                break
            time.sleep(backoff_s * (2 ** attempt))
        if not foreign and not self._pending:
            return []
        entries = [*foreign, *(self._spool_entry(*op) for op in self._pending)]
        lines = [f"{e['op']} {json.dumps(e['args'], default=str)[:200]}" for e in entries]
        unlogged.append_entries(self.spool_path, entries)
        self._pending = []
        self._drop_journal()
        log.warning("MLflow at %s: %d operation(s) could not be logged; saved to %s (replay with "
                    "`python -m reid.runtime.tracking replay %s`)", self.uri, len(lines), self.spool_path,
                    self.spool_path)
        return lines


def open_tracker(*args: Any, **kwargs: Any) -> Future[Tracker]:
    """A :class:`Tracker` opened in a background thread (importing MLflow and opening its store takes
    seconds); call ``.result()`` when the job has something to log."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-open")
    future = executor.submit(Tracker, *args, **kwargs)
    executor.shutdown(wait=False)
    return future


def replay(spool_path: str, uri: str | None = None) -> int:
    """Re-send operations spooled by :meth:`Tracker.close` into the run, experiment and tracking store they were
    spooled from (``uri`` overrides the store, for a server that moved); an operation whose run was never
    created goes into one new run per tracker that spooled it (recorded in its job folder, if it had one).
    Returns how many were sent; raises when MLflow is still unavailable (the file is kept, and a later replay
    sends the rest: steps and params already logged are skipped)."""
    entries = unlogged.read_entries(spool_path)
    sent = 0
    trackers: dict[tuple[str, str], Tracker] = {}
    for entry in entries:
        target = uri or entry.get("uri")
        key = (target or "", entry.get("run_id") or entry.get("tracker") or entry["run_key"])
        tracker = trackers.get(key)
        if tracker is None:
            tracker = Tracker(target, entry["run_key"], entry.get("experiment", DEFAULT_EXPERIMENT),
                              run_name=entry.get("run_name"), tags=entry.get("tags"),
                              parent_run_id=entry.get("parent_run_id"),
                              spool_dir=os.path.dirname(os.path.abspath(spool_path)), mark_resumed=False,
                              run_id=entry.get("run_id"), job_folder=entry.get("job_folder"))
            if tracker.run_id is None:
                raise RuntimeError(f"MLflow at {tracker.uri} is unavailable: nothing replayed from {spool_path} "
                                   f"after {sent} operation(s); try again later")
            trackers[key] = tracker
        getattr(tracker, entry["op"])(*entry["args"], **entry["kwargs"])
        sent += 1
    os.replace(spool_path, spool_path + ".replayed")
    return sent


if __name__ == "__main__":
    import sys

    if len(sys.argv) >= 3 and sys.argv[1] == "replay":
        print(f"replayed {replay(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)} operation(s)")
    else:
        print("usage: python -m reid.runtime.tracking replay SPOOL.jsonl [TRACKING_URI]")
