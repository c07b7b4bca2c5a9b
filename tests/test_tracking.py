"""The tracker against a real local MLflow store (SQLite), and against a dead server: one run per job, found by
its id (given, or recorded in the job's output folder), never by its name; spooled operations replayed into the
run and store they came from; dataset inputs, metrics linked to a logged model, system metrics."""

import json
import time

import mlflow
import pytest

from reid.core.contracts.manifest import RUNS_KEY, ShardedOutput, recorded_run
from reid.runtime.mlflow_store import make_client
from reid.runtime.tracking import RUN_KEY_TAG, Tracker, replay

DEAD = "http://127.0.0.1:9"  # nothing listens on port 9


@pytest.fixture()
def uri(tmp_path):
    return f"sqlite:///{tmp_path}/mlflow.db"


def _runs(uri: str, experiment: str = "t") -> list:
    client = mlflow.tracking.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


def test_a_tracker_without_a_run_id_or_job_folder_starts_a_new_run(uri, tmp_path):
    """Two jobs with the same name are two runs: the name is for people (run name, ``reid.run_key`` tag)."""
    first = Tracker(uri, "label", experiment="t", spool_dir=str(tmp_path))
    first.log_params({"out": "a"})
    first.log_metrics({"rows": 1.0}, step=0)
    first.close()
    second = Tracker(uri, "label", experiment="t", spool_dir=str(tmp_path))
    second.log_params({"out": "b"})
    second.log_metrics({"rows": 2.0}, step=0)
    second.close()
    assert first.run_id != second.run_id and not second.resumed
    runs = {r.info.run_id: r for r in _runs(uri)}
    assert {r.data.params["out"] for r in runs.values()} == {"a", "b"}
    assert runs[second.run_id].data.metrics["rows"] == 2.0 and runs[first.run_id].data.metrics["rows"] == 1.0
    assert {r.info.run_name for r in runs.values()} == {"label"}
    assert {r.data.tags[RUN_KEY_TAG] for r in runs.values()} == {"label"}


def test_a_given_run_id_continues_that_run_and_skips_logged_steps(uri, tmp_path):
    t = Tracker(uri, "job-a", experiment="t", spool_dir=str(tmp_path))
    t.log_params({"lr": 0.1, "epochs": 3})
    t.log_metrics({"loss": 1.0}, step=0)
    t.log_metrics({"loss": 0.5}, step=1)
    assert t.close() == []
    # a resumed job re-logs the same params and replays steps 0-1 before going on
    t2 = Tracker(uri, "job-a", experiment="t", spool_dir=str(tmp_path), run_id=t.run_id)
    assert t2.run_id == t.run_id and t2.resumed
    t2.log_params({"lr": 0.1, "epochs": 3})
    t2.log_metrics({"loss": 9.0}, step=1)
    t2.log_metrics({"loss": 0.25}, step=2)
    assert t2.close() == []
    client = mlflow.tracking.MlflowClient(uri)
    history = [(m.step, m.value) for m in client.get_metric_history(t.run_id, "loss")]
    assert sorted(history) == [(0, 1.0), (1, 0.5), (2, 0.25)]
    run = client.get_run(t.run_id)
    assert run.data.params == {"lr": "0.1", "epochs": "3"}
    assert run.data.tags[RUN_KEY_TAG] == "job-a" and run.info.status == "FINISHED"
    assert run.data.tags["reid.resumed"] == "true" and len(_runs(uri)) == 1


def test_a_job_folder_records_its_run_and_a_resumed_job_continues_it(uri, tmp_path):
    """The run id lives in the output's ``_job.json`` (per tracking store), beside the job's identity, which it
    does not change: the same folder continues its run, another folder or another store is another run."""
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    ShardedOutput(str(out_a), "id").bind_job({"threshold": 0.5})
    first = Tracker(uri, "label", experiment="t", spool_dir=str(tmp_path), job_folder=str(out_a))
    first.close()
    assert recorded_run(str(out_a), first.uri) == first.run_id
    job = json.loads((out_a / "_job.json").read_text())
    assert job == {"threshold": 0.5, RUNS_KEY: {first.uri: first.run_id}}
    ShardedOutput(str(out_a), "id").bind_job({"threshold": 0.5})  # the resumed job's identity check still passes
    again = Tracker(uri, "label", experiment="t", spool_dir=str(tmp_path), job_folder=str(out_a))
    other = Tracker(uri, "label", experiment="t", spool_dir=str(tmp_path), job_folder=str(out_b))
    elsewhere = Tracker(f"sqlite:///{tmp_path}/other.db", "label", experiment="t", spool_dir=str(tmp_path),
                        job_folder=str(out_a))
    for t in (again, other, elsewhere):
        t.close()
    assert again.run_id == first.run_id and again.resumed
    assert other.run_id != first.run_id and elsewhere.run_id not in (first.run_id, other.run_id)
    assert recorded_run(str(out_b), uri) == other.run_id
    assert json.loads((out_a / "_job.json").read_text())[RUNS_KEY] == {first.uri: first.run_id,
                                                                       elsewhere.uri: elsewhere.run_id}
    assert len(_runs(uri)) == 2
    # a recorded run that the store no longer has (deleted) is replaced by a new one, recorded instead
    mlflow.tracking.MlflowClient(uri).delete_run(first.run_id)
    fresh = Tracker(uri, "label", experiment="t", spool_dir=str(tmp_path), job_folder=str(out_a))
    fresh.close()
    assert fresh.run_id != first.run_id and recorded_run(str(out_a), uri) == fresh.run_id


def test_dead_server_never_raises_and_spools(tmp_path):
    t = Tracker(DEAD, "job-b", spool_dir=str(tmp_path))
    t.log_params({"a": 1})
    t.log_metrics({"loss": 1.0}, step=0)
    unlogged = t.close(retries=1, backoff_s=0.01)
    assert len(unlogged) == 3  # params, metrics, end
    entries = [json.loads(line) for line in (tmp_path / "mlflow_unlogged_job-b.jsonl").read_text().splitlines()]
    assert len(entries) == 3 and {(e["uri"], e["run_id"], e["experiment"]) for e in entries} == {
        (DEAD, None, "comic-reid")}


def test_replay_writes_into_the_run_and_store_it_was_spooled_from(uri, tmp_path, monkeypatch):
    """The server goes away after the run exists: what the job could not log is replayed into that very run of
    that store, whatever the replaying shell's MLFLOW_TRACKING_URI says."""
    t = Tracker(uri, "job-c", experiment="t", spool_dir=str(tmp_path))
    t.log_metrics({"loss": 1.0}, step=0)
    t._client = make_client(DEAD)  # the server is gone from here on
    t.log_metrics({"loss": 0.5}, step=1)
    t.set_tags({"reid.note": "late"})
    assert len(t.close(retries=1, backoff_s=0.01)) == 3
    other = f"sqlite:///{tmp_path}/elsewhere.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
    spool = tmp_path / "mlflow_unlogged_job-c.jsonl"
    assert replay(str(spool)) == 3
    run = mlflow.tracking.MlflowClient(uri).get_run(t.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["reid.note"] == "late"
    assert "reid.resumed" not in run.data.tags
    history = mlflow.tracking.MlflowClient(uri).get_metric_history(t.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(0, 1.0), (1, 0.5)]
    assert len(_runs(uri)) == 1 and _runs(other) == [] and not spool.exists()


def test_replay_of_a_run_never_created_makes_one_and_records_it(uri, tmp_path):
    out = tmp_path / "out"
    t = Tracker(DEAD, "job-d", experiment="t", spool_dir=str(tmp_path), job_folder=str(out))
    t.log_params({"a": 1})
    t.close(retries=1, backoff_s=0.01)
    spool = tmp_path / "mlflow_unlogged_job-d.jsonl"
    with pytest.raises(RuntimeError, match="unavailable"):
        replay(str(spool))  # its own store is still down: nothing is lost
    assert spool.exists()
    assert replay(str(spool), uri) == 2  # the server moved: the store is given
    (run,) = _runs(uri)
    assert run.data.params == {"a": "1"} and run.info.run_name == "job-d" and run.info.status == "FINISHED"
    assert recorded_run(str(out), uri) == run.info.run_id


def test_system_metrics_are_logged_into_a_client_run(uri, tmp_path, monkeypatch):
    """MLflow's system metrics monitor on our run id (no fluent active run): CPU and memory every sample."""
    monkeypatch.delenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", raising=False)
    t = Tracker(uri, "train", experiment="t", spool_dir=str(tmp_path))
    assert t.monitor_system(sampling_interval=0.2)
    time.sleep(1.5)
    t.close()
    metrics = mlflow.tracking.MlflowClient(uri).get_run(t.run_id).data.metrics
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes",
            "system/system_memory_usage_percentage"} <= set(metrics)
    assert 0 < metrics["system/system_memory_usage_percentage"] <= 100
    assert not Tracker(DEAD, "x", spool_dir=str(tmp_path)).monitor_system()  # no run: refused, never raised


def test_inputs_and_metrics_linked_to_a_logged_model(uri, tmp_path):
    """Datasets as run inputs with their context; metrics logged with a model id are that model's metrics, and
    say which dataset they were measured on."""
    t = Tracker(uri, "ft", experiment="t", spool_dir=str(tmp_path))
    val = {"name": "validation_sequences", "digest": "d" * 32, "source": json.dumps({"uri": "/x/val.json"}),
           "source_type": "local", "schema": None, "profile": json.dumps({"num_rows": 3})}
    crops = {**val, "name": "crops", "digest": "c" * 32}
    t.log_inputs([(crops, "training"), (val, "validation"), (None, "testing")])
    client = mlflow.tracking.MlflowClient(uri)
    model = client.create_logged_model(t.experiment_id, name="reid_model", source_run_id=t.run_id)
    t.log_metrics({"final_val_map": 0.5}, step=2, model_id=model.model_id, dataset=val)
    t.log_metrics({"final_val_map": 0.5}, step=2, model_id=model.model_id, dataset=val)  # once per model
    t.close()
    run = client.get_run(t.run_id)
    inputs = {(i.dataset.name, i.dataset.digest): {tag.key: tag.value for tag in i.tags}
              for i in run.inputs.dataset_inputs}
    assert inputs == {("crops", "c" * 32): {"mlflow.data.context": "training"},
                      ("validation_sequences", "d" * 32): {"mlflow.data.context": "validation"}}
    (metric,) = client.get_logged_model(model.model_id).metrics
    assert (metric.key, metric.value, metric.step) == ("final_val_map", 0.5, 2)
    assert (metric.dataset_name, metric.dataset_digest) == ("validation_sequences", "d" * 32)
    assert run.data.metrics["final_val_map"] == 0.5


def test_local_store_keeps_artifacts_beside_it_and_is_a_model_training_experiment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # artifacts must not land in ./mlruns of the working directory
    store = tmp_path / "run" / "mlflow.db"
    store.parent.mkdir()
    t = Tracker(f"sqlite:///{store}", "job-c", experiment="kinds", spool_dir=str(tmp_path))
    (tmp_path / "a.txt").write_text("x")
    t.log_artifact(str(tmp_path / "a.txt"))
    t.close()
    exp = mlflow.tracking.MlflowClient(f"sqlite:///{store}").get_experiment_by_name("kinds")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert exp.artifact_location == f"file://{tmp_path}/run/mlartifacts"
    assert list((tmp_path / "run" / "mlartifacts").rglob("a.txt")) and not (tmp_path / "mlruns").exists()


def test_ui_hint_opens_the_model_training_view():
    """MLflow 3.17's UI picks GenAI or model training from a browser-wide toggle, not from the experiment: our
    links ask for the model-training view."""
    from reid.runtime.mlflow_store import ui_hint

    assert ui_hint("http://127.0.0.1:5000/", "3", "abc") == \
        "http://127.0.0.1:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    local = ui_hint("sqlite:////x/mlflow.db", "1", "r")
    assert local.startswith("mlflow ui --backend-store-uri sqlite:////x/mlflow.db") and \
        local.endswith("#/experiments/1/runs/r?workflowType=machine_learning")


def test_a_tracker_that_never_reached_mlflow_spools_into_the_run_it_was_given(tmp_path):
    """Rank 0 opens its tracker on the driver's run id; if MLflow is down from that moment on, what it spools
    still names that run (not None), so a replay continues it."""
    from reid.runtime.raycluster import free_ports

    down = f"http://127.0.0.1:{free_ports(1)[0]}"
    tracker = Tracker(down, "rank0", run_id="0123456789abcdef", spool_dir=str(tmp_path))
    tracker.log_metrics({"loss": 1.0}, step=0)
    assert tracker.close(retries=1, backoff_s=0.0)
    entries = [json.loads(line) for line in (tmp_path / "mlflow_unlogged_rank0.jsonl").read_text().splitlines()]
    assert entries and {e["run_id"] for e in entries} == {"0123456789abcdef"}


def _journals(folder) -> list:
    return sorted(folder.glob("*.pending.jsonl"))


def test_buffered_operations_are_on_disk_at_once_and_gone_once_sent(uri, tmp_path):
    """During an outage every buffered operation is journalled as it is buffered (a process killed now loses
    none); when the server answers again the buffer drains and the journal goes."""
    t = Tracker(uri, "job-j", experiment="t", spool_dir=str(tmp_path))
    t.log_metrics({"loss": 1.0}, step=0)
    assert _journals(tmp_path) == []  # nothing buffered, nothing written
    live = t._client
    t._client = make_client(DEAD)
    t.log_metrics({"loss": 0.5}, step=1)
    t.set_tags({"reid.note": "late"})
    (journal,) = _journals(tmp_path)
    entries = [json.loads(line) for line in journal.read_text().splitlines()]
    assert [e["op"] for e in entries] == ["_metrics_op", "_tags_op"] and {e["run_id"] for e in entries} == {t.run_id}
    t._client, t._next_retry = live, 0.0  # the server is back
    t.log_metrics({"loss": 0.25}, step=2)
    assert _journals(tmp_path) == [] and t.close() == []
    history = mlflow.tracking.MlflowClient(uri).get_metric_history(t.run_id, "loss")
    assert sorted(m.step for m in history) == [0, 1, 2]


def test_a_dead_trackers_journal_is_sent_by_the_next_tracker_of_its_run_to_close(uri, tmp_path):
    """Rank 0 dies during an outage with epoch 0 buffered; the restarted rank 0 logs epochs 1-2 once MLflow is
    back and closes: epoch 0 is adopted from the dead one's journal and logged, though later steps came first."""
    driver = Tracker(uri, "train", experiment="t", spool_dir=str(tmp_path))
    dead = Tracker(DEAD, "train", experiment="t", spool_dir=str(tmp_path), run_id=driver.run_id, mark_resumed=False)
    dead.log_metrics({"loss": 3.0}, step=0)
    dead.set_tags({"reid.from_the_dead": "yes"})
    dead.cycle = dead  # dropped inside a reference cycle: only the garbage collector frees it
    del dead  # killed: never closed
    assert len(_journals(tmp_path)) == 1
    restarted = Tracker(uri, "train", experiment="t", spool_dir=str(tmp_path), run_id=driver.run_id,
                        mark_resumed=False)
    restarted.log_metrics({"loss": 2.0}, step=1)
    restarted.log_metrics({"loss": 1.0}, step=2)
    assert restarted.close() == [] and _journals(tmp_path) == []
    assert driver.close() == []
    run = mlflow.tracking.MlflowClient(uri).get_run(driver.run_id)
    history = mlflow.tracking.MlflowClient(uri).get_metric_history(driver.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(0, 3.0), (1, 2.0), (2, 1.0)]
    assert run.data.tags["reid.from_the_dead"] == "yes" and run.info.status == "FINISHED"
    assert not (tmp_path / "mlflow_unlogged_train.jsonl").exists()


def test_an_adopted_journal_is_spooled_when_mlflow_is_still_down_and_replays_in_any_order(uri, tmp_path):
    """Both faults at once: MLflow stays down while rank 0 dies and its successor finishes. The successor spools
    its own epochs and the dead one's; a replay logs every epoch once, though the spool holds them out of order."""
    run_id = Tracker(uri, "train", experiment="t", spool_dir=str(tmp_path)).run_id
    dead = Tracker(DEAD, "train", experiment="t", spool_dir=str(tmp_path), run_id=run_id, mark_resumed=False)
    dead.log_metrics({"loss": 3.0}, step=0)
    del dead
    other_run = Tracker(DEAD, "train", experiment="t", spool_dir=str(tmp_path), run_id="f" * 32)
    other_run.log_metrics({"loss": 9.0}, step=0)
    del other_run  # a journal of another run: spooled as it is, never sent into this one
    restarted = Tracker(DEAD, "train", experiment="t", spool_dir=str(tmp_path), run_id=run_id)
    restarted.log_metrics({"loss": 2.0}, step=1)
    restarted.log_metrics({"loss": 1.0}, step=2)
    unlogged = restarted.close(retries=1, backoff_s=0.0)
    assert len(unlogged) == 5 and _journals(tmp_path) == []  # 2 adopted + 2 own + the end
    spool = tmp_path / "mlflow_unlogged_train.jsonl"
    entries = [json.loads(line) for line in spool.read_text().splitlines()]
    assert [e["args"][1] for e in entries if e["op"] == "_metrics_op" and e["run_id"] == run_id] == [1, 2, 0]
    assert replay(str(spool), uri) == 5
    history = mlflow.tracking.MlflowClient(uri).get_metric_history(run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(0, 3.0), (1, 2.0), (2, 1.0)]


def test_a_journal_is_adopted_only_once_its_writer_has_ended(uri, tmp_path):
    """Two jobs of one name on one folder at once (two label jobs on one --out): the first to close leaves the
    other's journal alone while that process runs; once it died unclosed, the next close adopts it."""
    import subprocess
    import sys

    run_id = Tracker(uri, "label", experiment="t", spool_dir=str(tmp_path)).run_id
    child = subprocess.Popen(
        [sys.executable, "-c", "import os, sys\nfrom reid.runtime.tracking import Tracker\n"
         f"t = Tracker({DEAD!r}, 'label', experiment='t', spool_dir={str(tmp_path)!r}, run_id={run_id!r})\n"
         "t.log_metrics({'rows': 7.0}, step=0)\nprint('journalled', flush=True)\nsys.stdin.readline()\nos._exit(0)"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "journalled"
        assert Tracker(uri, "label", experiment="t", spool_dir=str(tmp_path), run_id=run_id).close() == []
        assert len(_journals(tmp_path)) == 1, "a running writer's journal was taken"
        mine = Tracker(uri, "label", experiment="t", spool_dir=str(tmp_path), run_id=run_id)
        live = Tracker(DEAD, "label", experiment="t", spool_dir=str(tmp_path), run_id=run_id)
        live.log_metrics({"rows": 8.0}, step=1)  # an open tracker of this very process: left alone too
    finally:
        child.communicate("exit\n", timeout=60)
    assert child.returncode == 0
    assert mine.close() == []
    assert [str(p) for p in _journals(tmp_path)] == [live.journal_path]
    history = mlflow.tracking.MlflowClient(uri).get_metric_history(run_id, "rows")
    assert [(m.step, m.value) for m in history] == [(0, 7.0)]  # the dead child's, not the live tracker's
    assert len(live.close(retries=1, backoff_s=0.0)) == 2 and _journals(tmp_path) == []
