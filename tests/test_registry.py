"""The registry's champion alias on a real MLflow store (SQLite): a new version takes ``@champion`` only when its
validation MAP@R beats the champion's, the decision is recorded on its run, and ``models:/NAME@champion`` resolves
to it."""

import math
import re

import pytest
from mlflow.tracking import MlflowClient

from reid.runtime.registry import CHAMPION, FIGURE_TAG, promote_champion, resolve_model_uri
from reid.runtime.tracking import Tracker

NAME = "comic-reid"


@pytest.fixture()
def uri(tmp_path):
    return f"sqlite:///{tmp_path}/mlflow.db"


def _register(uri: str, tmp_path, figure: float) -> tuple[dict[str, str], dict[str, str]]:
    """A fine-tuning run that registers a version with ``figure`` and lets the champion decision run; returns
    (the decision, the run's tags)."""
    tracker = Tracker(uri, "ft", spool_dir=str(tmp_path))
    checkpoint = tmp_path / "model.pt"  # stands for the checkpoint that log_reid_model stores with the model
    checkpoint.write_text(str(figure))
    tracker.log_artifact(str(checkpoint), "reid_model/extra_files")
    client = MlflowClient(uri)
    if not client.search_registered_models(f"name = '{NAME}'"):
        client.create_registered_model(NAME)
    version = client.create_model_version(NAME, f"runs:/{tracker.run_id}/reid_model", tracker.run_id).version
    decision = promote_champion(tracker, NAME, version, figure)
    tracker.close()
    return {**decision, "version": str(version)}, client.get_run(tracker.run_id).data.tags


def _champion(uri: str) -> str:
    return str(MlflowClient(uri).get_model_version_by_alias(NAME, CHAMPION).version)


def test_champion_moves_only_to_a_better_version(uri, tmp_path):
    first, tags = _register(uri, tmp_path, 0.50)
    assert first["champion_decision"] == "promoted" and "no champion yet" in first["champion_reason"]
    assert tags["reid.champion_decision"] == "promoted" and _champion(uri) == first["version"] == "1"
    worse, tags = _register(uri, tmp_path, 0.40)
    assert worse["champion_decision"] == "kept" and tags["reid.champion_version"] == "1"
    assert "does not beat champion version 1 (0.5000)" in tags["reid.champion_reason"]
    tie, _ = _register(uri, tmp_path, 0.50)
    assert tie["champion_decision"] == "kept" and _champion(uri) == "1"
    better, tags = _register(uri, tmp_path, 0.61)
    assert better["champion_decision"] == "promoted" and _champion(uri) == better["version"] == "4"
    assert "beats champion version 1 (0.5000)" in tags["reid.champion_reason"]
    nan, _ = _register(uri, tmp_path, math.nan)
    assert nan["champion_decision"] == "kept" and _champion(uri) == "4"
    client = MlflowClient(uri)
    assert client.get_model_version(NAME, "4").tags[FIGURE_TAG] == "0.61"
    # what `jobs/label.py --model models:/comic-reid@champion` reads
    path, provenance = resolve_model_uri(f"models:/{NAME}@{CHAMPION}", uri, str(tmp_path / "download"))
    assert open(path).read() == "0.61" and provenance["model_version"] == "4"
    assert FIGURE_TAG not in client.get_model_version(NAME, nan["version"]).tags


def test_a_champion_set_by_hand_without_a_figure_is_kept(uri, tmp_path):
    first, _ = _register(uri, tmp_path, math.nan)
    MlflowClient(uri).set_registered_model_alias(NAME, CHAMPION, first["version"])
    second, tags = _register(uri, tmp_path, 0.9)
    assert second["champion_decision"] == "kept" and "no recorded validation MAP@R" in tags["reid.champion_reason"]
    assert _champion(uri) == first["version"]


def test_mlflow_down_leaves_the_alias_alone_and_never_raises(tmp_path, caplog):
    tracker = Tracker("http://127.0.0.1:9", "ft", spool_dir=str(tmp_path))
    assert promote_champion(tracker, NAME, "3", 0.7) == {}
    assert "no champion decision" in caplog.text


def test_a_model_uri_that_is_not_in_the_store_is_refused_by_name(uri, tmp_path):
    """``--model models:/NAME/VERSION`` of a version the store does not hold: a CheckpointError that names the
    URI and the store, before any work."""
    from reid.core.errors import CheckpointError

    MlflowClient(uri).create_registered_model(NAME)
    for missing in ("models:/nope/3", f"models:/{NAME}/7", f"models:/{NAME}@{CHAMPION}"):
        with pytest.raises(CheckpointError, match=rf"{re.escape(missing)}: not found in MLflow at {re.escape(uri)}"):
            resolve_model_uri(missing, uri, str(tmp_path / "download"))
    assert not (tmp_path / "download").exists() or not any((tmp_path / "download").iterdir())
