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
