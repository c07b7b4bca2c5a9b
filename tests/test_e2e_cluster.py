"""The pipeline on a local multi-node cluster (head + 2 worker nodes, each `ray start`, + MLflow server), every
stage a `ray job submit`; then faults: the label job is stopped and re-submitted; in one pretraining job the MLflow
server goes away and a worker node dies; then the cluster goes down and nothing is left running.

One cluster serves the module and the tests run in file order: the later ones reuse the pipeline's crops and
model, the node kill comes last but one (the node does not come back) and the last test stops everything.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from helpers import e2e
from mlflow.tracking import MlflowClient
from ray.job_submission import JobStatus

from reid.core.contracts.labels import row_id, window_id
from reid.core.data.formats import read_instances
from reid.core.data.ids import panel_id, parse_panel_id
from reid.core.models.checkpoint import load_model_checkpoint
from reid.runtime.localcluster import (
    LocalCluster,
    LocalClusterConfig,
    free_ports,
    owned_processes,
    port_in_use,
    process_alive,
    read_process,
)
from reid.stages.label import read_labels
from reid.stages.pipeline import STAGES

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

PREFIX = "e2e"
EXPERIMENT = "comic-reid"
WINDOW = 4  # the label job's default window size and stride: every panel in exactly one window
TINY_MODEL = ["--arch", "slim_resnet10", "--face-size", "32", "--body-size", "48"]
TINY_TRAIN = [*TINY_MODEL, "--batch-size", "16", "--workers", "2", "--data-cpus", "0.25"]


@pytest.fixture(scope="module")
def cluster(ray_session, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Head (1 CPU: job drivers, Train controllers) + 2 worker nodes of 2 CPUs: one worker node can hold a
    2-worker training run alone, so training survives the loss of the other.

    The test session's own local Ray runs beside it and this process's RAY_ADDRESS names that one: every job
    submitted from here must still reach this cluster, never the local Ray."""
    gcs, dashboard, client, mlflow = free_ports(4)
    config = LocalClusterConfig(
        state_dir=str(tmp_path_factory.mktemp("cluster")), num_workers=2, head_num_cpus=1, worker_num_cpus=2,
        gcs_port=gcs, dashboard_port=dashboard, client_server_port=client, mlflow_port=mlflow,
        object_store_mb=200, health_check_period_ms=1000, health_check_failure_threshold=3,
    )  # fmt: skip
    local_cluster = LocalCluster(config)
    _CHILDREN_BEFORE.update(_children_of_this_process())  # e.g. the session's own local Ray, not ours to judge
    try:
        started = time.monotonic()
        local_cluster.start()
        print(f"cluster up in {time.monotonic() - started:.0f} s")
        with pytest.MonkeyPatch.context() as env:
            e2e.log_in_to_mlflow(local_cluster, env)
            yield local_cluster
    finally:
        local_cluster.stop()


@pytest.fixture(scope="module")
def pipeline(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """`jobs/pipeline.py --submit`: corpus → crop → pretrain → finetune → label, each via `ray job submit`."""
    out = tmp_path_factory.mktemp("pipeline")
    argv = [sys.executable, "jobs/pipeline.py", "--submit", "--out", str(out), "--preset", "tiny", "--pages", "5",
            "--pretrain-epochs", "1", "--finetune-epochs", "1", "--batch-size", "16", "--sequences-per-batch", "4",
            "--arch", "slim_resnet10", "--face-size", "32", "--body-size", "48", "--data-cpus", "0.25",
            "--name-prefix", PREFIX]
    started = time.monotonic()
    done = subprocess.run(argv, env=cluster.subprocess_env(), cwd=e2e.REPO, capture_output=True, text=True,
                          timeout=1100, check=False)  # under pytest's per-test timeout
    print(f"pipeline submitted stage by stage in {time.monotonic() - started:.0f} s")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return {"out": out, "stdout": done.stdout, "corpus": out / "corpus", "crops": out / "crops",
            "labels": out / "labels", "reid_model": out / "train" / f"{PREFIX}-finetune" / "final" / "model.pt"}


# -- helpers ------------------------------------------------------------------------------------------------


def _corpus_instances(corpus: Path) -> list[str]:
    return read_instances(str(corpus / "data/ssl/merged_face_body.csv"))["instance_id"].tolist()


def _windows_brute_force(panel_ids: set[str]) -> dict[str, str]:
    """panel id -> its window: blocks of WINDOW panel numbers per page, the last one cut at the page's last
    panel with instances."""
    last_panel: dict[tuple[int, int], int] = defaultdict(int)
    for p in map(parse_panel_id, panel_ids):
        last_panel[(p.series, p.page)] = max(last_panel[(p.series, p.page)], p.panel)
    windows = {}
    for p in map(parse_panel_id, panel_ids):
        start = p.panel - p.panel % WINDOW
        numbers = range(start, min(start + WINDOW, last_panel[(p.series, p.page)] + 1))
        windows[str(p)] = window_id([panel_id(p.series, p.page, k) for k in numbers])
    return windows


def _assert_every_instance_once(labels_root: Path, instance_ids: list[str]) -> list[dict]:
    """The labels output holds every instance of the corpus exactly once, in the window of its panel."""
    rows = read_labels(str(labels_root)).to_pylist()
    ids = [r["instance_id"] for r in rows]
    assert len(ids) == len(set(ids)) == len(instance_ids), "duplicate or missing instances"
    assert set(ids) == set(instance_ids)
    windows = _windows_brute_force({r["panel_id"] for r in rows})
    for r in rows:
        assert r["window_id"] == windows[r["panel_id"]], r
        assert r["row_id"] == row_id(r["instance_id"], r["window_id"])
    success = json.loads((labels_root / "_SUCCESS").read_text())
    assert success["rows"] + success["error_rows"] == success["input_rows"] == len(instance_ids)
    return rows


def _run(uri: str, run_key: str):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`reid.run_key` = '{run_key}'")
    assert len(runs) <= 1, f"{len(runs)} MLflow runs for run key {run_key}"
    return runs[0] if runs else None


def _steps(uri: str, run_id: str, metric: str) -> list[int]:
    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, metric))


def _pretrain_argv(crops: Path, storage: Path, name: str, epochs: int, cpus_per_worker: float,
                   *extra: str) -> list[str]:
    return ["jobs/pretrain.py", "--crops", str(crops), "--storage", str(storage), "--name", name, *TINY_TRAIN,
            "--cpus-per-worker", str(cpus_per_worker), "--epochs", str(epochs), *extra]


def _stop_if_running(cluster: LocalCluster, submission_id: str) -> None:
    """A job a failed test left running must not hold the cluster's CPUs for the next tests."""
    if not cluster.job_status(submission_id).is_terminal():
        e2e.stop_job(cluster, submission_id)


# -- tests --------------------------------------------------------------------------------------------------


def test_pipeline_submitted_stage_by_stage(cluster: LocalCluster, pipeline: dict) -> None:
    stage_jobs = {sid: status for sid, status in e2e.jobs(cluster).items() if sid.startswith(f"{PREFIX}-")}
    submitted = sorted(sid.rsplit("-", 1)[0].removeprefix(f"{PREFIX}-") for sid in stage_jobs)
    assert submitted == sorted(STAGES), stage_jobs
    assert set(stage_jobs.values()) == {JobStatus.SUCCEEDED}, stage_jobs

    instance_ids = _corpus_instances(pipeline["corpus"])
    assert instance_ids
    _assert_every_instance_once(pipeline["labels"], instance_ids)

    uri = cluster.mlflow_uri
    runs = {stage: _run(uri, f"{PREFIX}-{stage}") for stage in ("crop", "pretrain", "finetune", "label")}
    assert {stage: run.info.status for stage, run in runs.items()} == dict.fromkeys(runs, "FINISHED")
    test_metrics = {k: v for k, v in runs["finetune"].data.metrics.items() if k.startswith("test_")}
    assert test_metrics["test_num_sequences"] >= 1
    for key in ("test_precision_at_1", "test_mean_average_precision_at_r", "test_r_precision"):
        assert 0.0 <= test_metrics[key] <= 1.0, test_metrics
    assert runs["label"].data.metrics["rows"] + runs["label"].data.metrics["unassigned"] == len(instance_ids)

    report = pipeline["labels"] / "report" / "index.html"
    assert report.stat().st_size > 0 and "<html" in report.read_text().lower()
    assert str(report) in pipeline["stdout"]
    _, model_config, _ = load_model_checkpoint(str(pipeline["reid_model"]), expected_kind="reid")
    assert (model_config.face_size, model_config.body_size) == (32, 48)


@pytest.mark.fault
def test_stopped_label_job_resubmitted_gives_every_instance_once(cluster: LocalCluster, pipeline: dict,
                                                                 tmp_path: Path) -> None:
    """`ray job stop` as soon as the first window shard is committed, then the same command again."""
    out = tmp_path / "labels"
    argv = ["jobs/label.py", "--model", str(pipeline["reid_model"]), "--crops", str(pipeline["crops"]),
            "--out", str(out), "--name", f"{PREFIX}-label-resubmitted", "--max-actors", "1",
            "--num-cpus-per-actor", "0.5", "--report-windows", "0"]
    e2e.submit_in_background(cluster, "label-stopped", argv)
    try:
        e2e.wait_for(lambda: list(out.glob("_windows/_manifest/*.json")), 600, "a committed window shard", 0.05)
        assert e2e.stop_job(cluster, "label-stopped")
    finally:
        _stop_if_running(cluster, "label-stopped")
    assert e2e.wait_job(cluster, "label-stopped", 120) == JobStatus.STOPPED
    e2e.wait_for(lambda: not e2e.alive_actors_of_job(cluster, "label-stopped"), 60,
                 "the stopped job's actors to die")  # nothing may still be writing: count the commits now
    total_shards = len(list((pipeline["crops"] / "_manifest").glob("*.json")))
    committed_before = len(list((out / "_windows" / "_manifest").glob("*.json")))
    print(f"stopped after {committed_before} of {total_shards} window shards")
    assert 1 <= committed_before <= total_shards
    assert not list(out.glob("_manifest/*.json")), "no final shard committed before the stop"
    assert not (out / "_SUCCESS").exists() and not (out / "_windows" / "_SUCCESS").exists()

    status, job_log = e2e.submit(cluster, "label-resubmitted", argv)
    assert status == JobStatus.SUCCEEDED, job_log[-4000:]
    rows = _assert_every_instance_once(out, _corpus_instances(pipeline["corpus"]))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["shards_this_run"] == total_shards - committed_before  # finished shards were not redone
    uninterrupted = read_labels(str(pipeline["labels"]), ["row_id"]).column("row_id").to_pylist()
    assert sorted(r["row_id"] for r in rows) == sorted(uninterrupted)


@pytest.mark.fault
def test_node_killed_during_an_mlflow_outage_resumes_and_loses_no_metric(cluster: LocalCluster, pipeline: dict,
                                                                         tmp_path: Path) -> None:
    """Two faults in one pretraining job: the MLflow server goes down once the run exists and comes back only
    after the job ended; meanwhile the raylet of the node that runs the training workers is killed as soon as a
    checkpoint is registered. Train restarts the worker group on the surviving nodes from that checkpoint and
    finishes; the job says what it could not log and where. The first rank 0 died with its epoch buffered: its
    journal is adopted by the rank 0 that finished, so `python -m reid.runtime.tracking replay` completes the run
    with every epoch logged once."""
    assert cluster.mlflow is not None
    name, storage, submission = f"{PREFIX}-two-faults", tmp_path / "train", "pretrain-two-faults"
    epochs = 3  # an epoch of the tiny model takes seconds: the kill must land with epochs still to train
    # 1 CPU per training worker: both fit on one 2-CPU worker node (Train packs them), not on the 1-CPU head
    argv = _pretrain_argv(pipeline["crops"], storage, name, epochs, 1.0, "--max-failures", "1")
    e2e.submit_in_background(cluster, submission, argv)
    try:
        started = e2e.wait_for(lambda: _run(cluster.mlflow_uri, name), 600, "the training run in MLflow", 0.5)
        # the run is opened before the workers start; an epoch takes seconds more, so none is logged yet
        cluster.mlflow.stop()

        # the worker group is placed before its first batch: find its node now, so the kill waits for nothing
        def this_jobs_train_nodes() -> set[str]:
            ours = e2e.job_id(cluster, submission)  # "None" until the driver runs
            return {a["node_id"] for a in e2e.actors(cluster, "RayTrainWorker") if a["job_id"] == ours}

        train_nodes = e2e.wait_for(this_jobs_train_nodes, 600, "the training workers")
        indices = [e2e.worker_index_of_node(cluster, node_id) for node_id in train_nodes]
        targets = sorted(i for i in indices if i is not None)
        assert targets, f"no training worker on a worker node: {train_nodes}"
        snapshot = storage / name / "checkpoint_manager_snapshot.json"  # written once the controller has it
        e2e.wait_for(snapshot.exists, 600, "the first registered checkpoint", 0.05)
        killed_pid = cluster.kill_worker(targets[0])
        killed_at = time.monotonic()
        nodes = cluster.wait_for_nodes(alive=2, timeout_s=60)
        print(f"node worker-{targets[0]} (raylet {killed_pid}) DEAD after {time.monotonic() - killed_at:.1f} s")
        assert read_process(killed_pid) is None
        status = e2e.wait_job(cluster, submission, 600)
    finally:
        _stop_if_running(cluster, submission)
        if cluster.mlflow.pid is None:
            cluster.mlflow.start()
    text = e2e.job_logs(cluster, submission)
    assert status == JobStatus.SUCCEEDED, text[-4000:]
    assert f"pretrain: finished epoch {epochs - 1}" in text
    dead_node = next(n["node_id"] for n in nodes if n["state"] == "DEAD")
    workers = e2e.actors(cluster, "RayTrainWorker", state="DEAD")
    placed = [a["node_id"] for a in workers if a["job_id"] == e2e.job_id(cluster, submission)]
    assert len(placed) == 4 and placed.count(dead_node) >= 1, "a second worker group, on the surviving nodes"
    _, _, extra = load_model_checkpoint(str(storage / name / "final" / "model.pt"), expected_kind="ssl")
    assert extra["epoch"] == epochs - 1

    assert re.search(rf"MLflow at {re.escape(cluster.mlflow_uri)} unavailable .*; buffering and retrying", text)
    assert re.search(rf"adopted \d+ operation\(s\) that a tracker of {re.escape(name)} left", text), text[-4000:]
    # the rank 0 that finished and the driver (the model and curves it logs at the end) each say what they saved
    saved = re.findall(r"(\d+) operation\(s\) could not be logged; saved to (\S+\.jsonl) \(replay with", text)
    assert saved and len({path for _, path in saved}) == 1, text[-4000:]
    spool = Path(saved[0][1])
    assert spool == storage / name / f"mlflow_unlogged_{name}.jsonl"  # next to the checkpoints, not in /tmp/ray
    assert not list(spool.parent.glob("*.pending.jsonl")), "a journal left behind"
    entries = [json.loads(line) for line in spool.read_text().splitlines()]
    assert len(entries) == sum(int(count) for count, _ in saved)
    assert entries[-1]["op"] == "_end_op" and {e["run_id"] for e in entries} == {started.info.run_id}
    spooled_epochs = {e["args"][1] for e in entries if e["op"] == "_metrics_op" and "loss" in e["args"][0]}
    # every epoch, the server being down from the start; epoch 0 only the killed rank 0 trained (the restart
    # resumes after it, asserted below), so it is in the spool only through that rank's journal
    assert spooled_epochs == set(range(epochs))

    run = _run(cluster.mlflow_uri, name)
    assert run.info.status == "RUNNING", "not complete before the replay"
    replay = subprocess.run([sys.executable, "-m", "reid.runtime.tracking", "replay", str(spool), cluster.mlflow_uri],
                            cwd=e2e.REPO, capture_output=True, text=True, timeout=120, check=False)
    assert replay.returncode == 0 and f"replayed {len(entries)} operation(s)" in replay.stdout, replay.stderr
    run = _run(cluster.mlflow_uri, name)
    assert run.info.status == "FINISHED" and run.info.run_id == started.info.run_id
    assert _steps(cluster.mlflow_uri, run.info.run_id, "loss") == list(range(epochs)), "each epoch logged once"
    resumed_at = int(run.data.tags["reid.resumed_at_epoch"])
    assert 1 <= resumed_at < epochs, f"restarted at epoch {resumed_at}: from a registered checkpoint, mid-run"
    assert not spool.exists() and Path(f"{spool}.replayed").exists()


_CHILDREN_BEFORE: set[int] = set()


def _children_of_this_process() -> list[int]:
    return [p.pid for p in psutil.Process().children() if read_process(p.pid) is not None]  # zombies are gone


def test_cluster_down_leaves_nothing_running(cluster: LocalCluster) -> None:
    processes = cluster.processes()
    assert {"gcs_server", "raylet"} <= {p.name for p in processes}
    cluster.stop()
    assert not [p for p in processes if process_alive(p)]
    assert not owned_processes(cluster.cluster_id)[0], "a process still carries the cluster's tag"
    left = [pid for pid in _children_of_this_process() if pid not in _CHILDREN_BEFORE]
    assert not left, "a process or server left behind by the tests"
    config = cluster.config
    for port in (config.gcs_port, config.dashboard_port, config.client_server_port, config.mlflow_port):
        assert port_in_use(port) is None, f"port {port} still in use"
