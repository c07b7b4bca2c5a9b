"""The label job in MLflow on a real local Ray and a real SQLite store: one run per job invocation. Two jobs with
the same name and another --out are two runs, each with its own params and metrics; a job re-run on its --out
(which resumes a killed job, or finds a finished one complete) continues its own run; a run lists the crops it
labelled as its input."""

from __future__ import annotations

import pytest
from helpers.labeling import label_config, random_reid_model
from mlflow.tracking import MlflowClient

from reid.core.contracts.manifest import recorded_run
from reid.runtime.run_inputs import crops_dataset
from reid.stages.label import run_label

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _runs(uri: str) -> dict[str, object]:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("comic-reid")
    return {r.info.run_id: r for r in client.search_runs([experiment.experiment_id])}


def test_two_label_jobs_are_two_runs_and_a_resumed_job_continues_its_own(ray_session, tiny_crops, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"  # a store of its own: every run in it is this test's
    model = random_reid_model(tmp_path)
    first = label_config(tiny_crops, tmp_path / "a", model, (0.5, 0.6), uri, name="label", report_windows=0)
    started = run_label(first)["run_id"]
    assert recorded_run(str(tmp_path / "a"), uri) == started  # in the output's _job.json
    resumed = run_label(first)
    other = run_label(label_config(tiny_crops, tmp_path / "b", model, (0.7, 0.8), uri, name="label",
                                   report_windows=0))
    assert resumed["run_id"] == started and other["run_id"] != started
    runs = _runs(uri)
    assert set(runs) == {started, other["run_id"]}
    a, b = runs[started], runs[other["run_id"]]
    assert a.info.run_name == b.info.run_name == "label" and a.info.status == b.info.status == "FINISHED"
    assert a.data.tags["reid.resumed"] == "true" and "reid.resumed" not in b.data.tags
    assert (a.data.params["out"], b.data.params["out"]) == (str(tmp_path / "a"), str(tmp_path / "b"))
    assert (a.data.metrics["threshold"], b.data.metrics["threshold"]) == (0.5, 0.7)
    client = MlflowClient(uri)
    assert [m.value for m in client.get_metric_history(started, "threshold")] == [0.5]  # logged once
    assert resumed["totals"]["rows"] == a.data.metrics["rows"] == b.data.metrics["rows"]
    crops = crops_dataset(str(tiny_crops))
    for run in (a, b):
        (given,) = run.inputs.dataset_inputs
        assert (given.dataset.name, given.dataset.digest) == ("crops", crops["digest"])
        assert {t.key: t.value for t in given.tags} == {"mlflow.data.context": "labeling"}
