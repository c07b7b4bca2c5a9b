"""What a user sees in the MLflow UI (``mlflow server`` on 127.0.0.1, Playwright driving Debian's Chromium): a
run page lists the datasets the run read and the champion decision, and the registered model's page shows the
``champion`` alias on the version that won it. A second run, without inputs and without the alias, is the control:
the same checks fail on it. ``REID_MLFLOW_SCREENSHOTS=DIR`` saves the pages as PNGs in DIR."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pyarrow as pa
import pytest
from mlflow.tracking import MlflowClient

from reid.core.contracts.manifest import ShardedOutput
from reid.runtime.localcluster import free_ports
from reid.runtime.localcluster.mlflow_server import MlflowServer
from reid.runtime.registry import promote_champion
from reid.runtime.run_inputs import crops_dataset, sequences_dataset
from reid.runtime.tracking import Tracker

pytestmark = [pytest.mark.slow]
NAME = "comic-reid"
SEQUENCE = {"seq_id": "7_0_0+7_0_1+7_0_2+7_0_3", "annotations": [
    {"charId": "a", "charInstances": [{"face": "7_0_0_face_0", "body": "7_0_0_body_0"}]}]}


def _data(root: Path) -> tuple[dict, dict]:
    """A crop output (two committed shards) and a validation sequences file, as MLflow datasets."""
    output = ShardedOutput(str(root / "crops"), "instance_id")
    output.bind_job({"pages_per_shard": 2, "instances_fingerprint": {"size": 1, "sha256": "ab" * 32}})
    for shard in ("7-00000", "7-00001"):
        output.commit(shard, pa.table({"instance_id": [f"{shard}/a", f"{shard}/b"]}),
                      pa.table({"id": pa.array([], pa.string())}), 2)
    (root / "validation_sequences.json").write_text(json.dumps([SEQUENCE]))
    return crops_dataset(str(root / "crops")), sequences_dataset(str(root / "validation_sequences.json"))


def _finetune_run(uri: str, root: Path, name: str, figure: float, inputs: bool) -> dict[str, str]:
    """A run shaped like fine-tuning's: inputs, system metrics, a logged model with linked metrics, a registered
    version and the champion decision."""
    tracker = Tracker(uri, name, tags={"reid.stage": "finetune"}, spool_dir=str(root), job_folder=str(root / name))
    crops, validation = _data(root / name)
    if inputs:
        tracker.log_inputs([(crops, "training"), (validation, "validation")])
        tracker.monitor_system(sampling_interval=0.2)
        time.sleep(1.0)
    client = MlflowClient(uri)
    model = client.create_logged_model(tracker.experiment_id, name="reid_model", source_run_id=tracker.run_id)
    client.finalize_logged_model(model.model_id, "READY")
    tracker.log_metrics({"final_val_mean_average_precision_at_r": figure}, step=1, model_id=model.model_id,
                        dataset=validation)
    if not client.search_registered_models(f"name = '{NAME}'"):
        client.create_registered_model(NAME)
    version = client.create_model_version(NAME, model.artifact_location, tracker.run_id, model_id=model.model_id)
    decision = promote_champion(tracker, NAME, version.version, figure)
    tracker.close()
    return {"run_id": tracker.run_id, "experiment_id": tracker.experiment_id, "version": str(version.version),
            "crops": f"crops ({crops['digest']})", **decision}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("mlflow_ui")
    uri = f"sqlite:///{root / 'server' / 'mlflow.db'}"  # the store the server below opens
    (root / "server").mkdir()
    champion = _finetune_run(uri, root, "ft-champion", 0.6, inputs=True)
    control = _finetune_run(uri, root, "ft-control", 0.4, inputs=False)
    assert champion["champion_decision"] == "promoted" and control["champion_decision"] == "kept"
    (port,) = free_ports(1)
    login = {"username": "reid-ui", "password": "a-password-from-the-environment"}
    with pytest.MonkeyPatch.context() as env:  # the server's admin comes from the environment
        env.setenv("MLFLOW_TRACKING_USERNAME", login["username"])
        env.setenv("MLFLOW_TRACKING_PASSWORD", login["password"])
        with MlflowServer(root / "server", port, startup_timeout_s=300) as server:
            yield {"url": server.uri, "login": login, "champion": champion, "control": control}


def _open(browser, store: dict, url: str):
    """A page of the server, logged in as the browser does after its basic-auth prompt."""
    page = browser.new_page(viewport={"width": 1280, "height": 1000}, http_credentials=store["login"])
    page.goto(url)
    return page


def _screenshot(page, name: str) -> None:
    folder = os.environ.get("REID_MLFLOW_SCREENSHOTS")
    if folder:
        close = page.get_by_role("button", name="Close")  # the assistant's side panel
        if close.count():
            close.first.click()
        page.screenshot(path=str(Path(folder) / name))


def _run_page(browser, store: dict, run: dict):
    page = _open(browser, store, f"{store['url']}/#/experiments/{run['experiment_id']}/runs/{run['run_id']}"
                          "?workflowType=machine_learning")
    page.get_by_text("About this run").wait_for(timeout=120_000)
    return page


def test_the_run_page_lists_its_datasets_and_the_champion_decision(store, browser):
    from playwright.sync_api import expect

    run = store["champion"]
    page = _run_page(browser, store, run)
    expect(page.get_by_text(run["crops"], exact=True)).to_be_visible()
    expect(page.get_by_text(re.compile(r"^training$", re.IGNORECASE))).to_be_visible()  # the dataset's context
    expect(page.get_by_text("reid.champion_decision", exact=True)).to_be_visible()
    expect(page.get_by_text(re.compile(r"^: promoted$"))).to_be_visible()
    expect(page.get_by_text("system/cpu_utilization_percentage").first).to_be_attached()
    _screenshot(page, "mlflow_run.png")
    page.close()
    control = _run_page(browser, store, store["control"])  # the same checks fail where the things are missing
    expect(control.get_by_text(re.compile(r"^crops \("))).to_have_count(0)
    expect(control.get_by_text(re.compile(r"^: kept$"))).to_be_visible()
    expect(control.get_by_text("system/cpu_utilization_percentage")).to_have_count(0)
    control.close()


def test_the_registered_model_shows_the_champion_alias_on_the_winning_version(store, browser):
    from playwright.sync_api import expect

    page = _open(browser, store, f"{store['url']}/#/models/{NAME}")
    winner, control = store["champion"]["version"], store["control"]["version"]
    row = page.get_by_role("row").filter(has_text=f"Version {winner}")
    expect(row).to_contain_text("champion", timeout=120_000)
    expect(page.get_by_role("row").filter(has_text=f"Version {control}")).not_to_contain_text("champion")
    _screenshot(page, "mlflow_champion.png")
    page.close()
