"""The tracker against a real local MLflow store (SQLite), and against a dead server."""

import mlflow
import pytest

from reid.tracking import RUN_KEY_TAG, Tracker


@pytest.fixture()
def uri(tmp_path):
    return f"sqlite:///{tmp_path}/mlflow.db"


def test_resume_same_run_skips_logged_steps(uri, tmp_path):
    t = Tracker(uri, "job-a", experiment="t", spool_dir=str(tmp_path))
    t.log_params({"lr": 0.1, "epochs": 3})
    t.log_metrics({"loss": 1.0}, step=0)
    t.log_metrics({"loss": 0.5}, step=1)
    assert t.close() == []
    # a resumed job re-logs the same params and replays steps 0-1 before going on
    t2 = Tracker(uri, "job-a", experiment="t", spool_dir=str(tmp_path))
    assert t2.run_id == t.run_id
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


def test_dead_server_never_raises_and_spools(tmp_path):
    t = Tracker("http://127.0.0.1:9", "job-b", spool_dir=str(tmp_path))  # nothing listens on port 9
    t.log_params({"a": 1})
    t.log_metrics({"loss": 1.0}, step=0)
    unlogged = t.close(retries=1, backoff_s=0.01)
    assert len(unlogged) == 3  # params, metrics, end
    assert (tmp_path / "mlflow_unlogged_job-b.jsonl").read_text().count("\n") == 3


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
    from reid.tracking import ui_hint

    assert ui_hint("http://127.0.0.1:5000/", "3", "abc") == \
        "http://127.0.0.1:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    local = ui_hint("sqlite:////x/mlflow.db", "1", "r")
    assert local.startswith("mlflow ui --backend-store-uri sqlite:////x/mlflow.db") and \
        local.endswith("#/experiments/1/runs/r?workflowType=machine_learning")
