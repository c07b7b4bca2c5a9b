"""Faults of the label job on a real local Ray, with real processes: a labeling actor killed by PID mid-pass, two
jobs started on one output folder at once, a crops shard truncated after the crop job finished, bad sequences.
Each ends with every (instance, window) exactly once, or with a clear error that names the damaged file."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
from helpers.labeling import cli_args, crop_ids, label_config, random_reid_model
from helpers.raylets import session_raylets

from reid.core.contracts.manifest import ShardIntegrityError
from reid.core.data.ids import instance_id, parse_seq_id
from reid.core.errors import ConfigError
from reid.stages.crop import CropConfig, run_crop
from reid.stages.label import read_labels, run_label

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.fault]
THRESHOLDS = (1.0, 0.8)  # any: these tests are about rows, not identities


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return random_reid_model(tmp_path_factory.mktemp("model"))


def _job(cfg, *extra: str) -> subprocess.Popen:
    """``jobs/label.py`` in its own process, on the test session's Ray (RAY_ADDRESS is inherited)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, str(REPO / "jobs/label.py"), *cli_args(cfg), *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _pids(title_part: str) -> list[int]:
    """PIDs of this test session's Ray worker processes whose command line (a Ray worker's process title)
    contains ``title_part``: only the descendants of this session's raylet, never another session's actors."""
    descendants = [p for raylet in session_raylets() for p in raylet.children(recursive=True)]
    return [p.pid for p in descendants if title_part in " ".join(_cmdline(p))]


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:  # gone since it was listed
        return []


def _assert_exactly_once(out: Path, crops_root: Path) -> None:
    labels = read_labels(str(out)).to_pylist()
    row_ids = [r["row_id"] for r in labels]
    ok, failed = crop_ids(crops_root)
    assert len(row_ids) == len(set(row_ids)) == len(ok) + len(failed)  # stride = window: one window per box
    assert {r["instance_id"] for r in labels} == set(ok) | set(failed)
    success = json.loads((out / "_SUCCESS").read_text())
    assert success["rows"] + success["error_rows"] == len(row_ids)


def test_labeling_actor_killed_by_pid_mid_pass(ray_session, tiny_crops, model_path, tmp_path, mlflow_uri):
    out = tmp_path / "labels"
    cfg = label_config(tiny_crops, out, model_path, THRESHOLDS, mlflow_uri, name="label-actor-kill",
                       report_windows=0)
    total = len(list((tiny_crops / "_manifest").glob("*.json")))
    # Fault injection on (each work unit waits 1 s before its commit) with a driver exit that never comes: the
    # pass lasts long enough for the kill to land while shards are still pending.
    job = _job(cfg, "--fail-after-shards", "1000000")
    killed, committed_at_kill = None, None
    deadline = time.time() + 180
    while killed is None and job.poll() is None and time.time() < deadline:
        committed = len(list((out / "_windows" / "_manifest").glob("*.json")))
        actors = _pids("ShardLabeler")
        if committed >= 1 and actors:
            os.kill(actors[0], signal.SIGKILL)
            killed, committed_at_kill = actors[0], committed
        time.sleep(0.05)
    output, _ = job.communicate(timeout=300)
    assert killed is not None, output[-3000:]
    assert job.returncode == 0, output[-3000:]
    assert committed_at_kill < total  # the kill came mid-pass
    assert not any(p == killed for p in _pids("ShardLabeler"))
    _assert_exactly_once(out, tiny_crops)


def test_two_label_jobs_on_one_out_at_once(ray_session, tiny_crops, model_path, tmp_path, mlflow_uri):
    out = tmp_path / "labels"
    cfg = label_config(tiny_crops, out, model_path, THRESHOLDS, mlflow_uri, name="label-twice", report_windows=0,
                       max_actors=1)
    first, second = _job(cfg), _job(cfg)
    outputs = [job.communicate(timeout=400)[0] for job in (first, second)]
    assert first.returncode == 0, outputs[0][-3000:]
    assert second.returncode == 0, outputs[1][-3000:]
    _assert_exactly_once(out, tiny_crops)
    assert len(list((out / "data").glob("*.parquet"))) == len(list((tiny_crops / "_manifest").glob("*.json")))


def test_truncated_crops_shard_is_named_before_any_work(ray_session, tiny_corpus, tiny_crops, model_path, tmp_path,
                                                        mlflow_uri):
    crops = tmp_path / "crops"
    shutil.copytree(tiny_crops, crops)
    victim = sorted((crops / "data").glob("*.parquet"))[1]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    out = tmp_path / "labels"
    cfg = label_config(crops, out, model_path, THRESHOLDS, mlflow_uri, name="label-truncated", report_windows=0)
    with pytest.raises(ShardIntegrityError, match=rf"{victim.name}: shard {victim.stem} of .* is unreadable "
                                                  r"\(truncated or corrupt.*delete its entry in"):
        run_label(cfg)
    assert not out.exists()
    # the remedy the error gives: drop the shard's manifest entry and _SUCCESS, re-run the crop job
    (crops / "_manifest" / f"{victim.stem}.json").unlink()
    (crops / "_SUCCESS").unlink()
    totals = run_crop(CropConfig(comics_root=str(tiny_corpus), out=str(crops), pages_per_shard=2,
                                 mlflow_uri=mlflow_uri, name="recrop"))
    assert totals["shards_this_run"] == 1
    run_label(cfg)
    _assert_exactly_once(out, crops)


def test_bad_sequences_are_recorded_and_the_rest_labelled(ray_session, tiny_corpus, tiny_crops, model_path, tmp_path,
                                                          mlflow_uri):
    sequences = json.loads((tiny_corpus / "data/comics_seq/train_sequences.json").read_text())
    bad = json.loads(json.dumps(sequences[0]))
    first = parse_seq_id(bad["seq_id"])[0]
    bad["annotations"][0]["charInstances"] = [{"face": instance_id(first.series, first.page, first.panel, "face", 99)}]
    path = tmp_path / "train_sequences.json"
    path.write_text(json.dumps([*sequences[1:], bad]))
    out = tmp_path / "labels"
    cfg = label_config(tiny_crops, out, model_path, THRESHOLDS, mlflow_uri, name="label-bad-seq", report_windows=0,
                       sequences=str(path), max_bad_row_fraction=0.5)
    result = run_label(cfg)
    (error,) = [r for r in pq.read_table(out / "errors").to_pylist() if r["stage"] == "input"]  # pandas' reader too
    assert error["id"].startswith(f"entry {len(sequences) - 1} (seq_id {bad['seq_id']!r})")
    assert "_face_99' is absent from the instance CSV" in error["reason"] and error["source"] == str(path)
    assert result["metrics"]["bad_sequences"] == 1 and result["totals"]["input_error_rows"] == 1
    windows = {r["window_id"] for r in read_labels(str(out)).to_pylist()}
    assert windows and windows <= {s["seq_id"] for s in sequences[1:]} and bad["seq_id"] not in windows
    # the same path with other contents: a re-run names the changed file instead of keeping stale labels
    path.write_text(json.dumps(sequences[1:]))
    with pytest.raises(ConfigError, match=r"other inputs or arguments \(sequences changed: \d+ -> \d+ bytes"):
        run_label(cfg)


def test_label_with_a_registered_model_records_its_version(ray_session, tiny_crops, model_path, tmp_path,
                                                           mlflow_uri):
    """`--model models:/NAME/VERSION`: the label job downloads that version next to its output, labels with it,
    and records which version it was (MLflow tags and metrics.json)."""
    from mlflow.tracking import MlflowClient

    from reid.core.models import load_model_checkpoint
    from reid.runtime.registry import log_reid_model
    from reid.runtime.tracking import Tracker

    tracker = Tracker(mlflow_uri, "register-for-label")
    logged = log_reid_model(tracker, load_model_checkpoint(str(model_path))[0], str(model_path), "label-test-model")
    tracker.close()
    uri = f"models:/label-test-model/{logged['model_version']}"
    out = tmp_path / "labels"
    result = run_label(label_config(tiny_crops, out, uri, THRESHOLDS, mlflow_uri, name="label-registered",
                                    report_windows=0))
    metrics = result["metrics"]
    assert (metrics["model_uri"], metrics["model_version"]) == (uri, logged["model_version"])
    tags = MlflowClient(mlflow_uri).get_run(result["run_id"]).data.tags
    assert tags["reid.model_version"] == logged["model_version"] and tags["reid.registered_model"] == "label-test-model"
    # the version's files sit under <out>/_model/ in whatever layout MLflow downloads them (MLflow 3 logged
    # models add an artifacts/ level); exactly one checkpoint, the registered one
    downloaded = list((out / "_model").rglob("model.pt"))
    assert len(downloaded) == 1 and downloaded[0].read_bytes() == model_path.read_bytes(), downloaded
    _assert_exactly_once(out, tiny_crops)


def test_a_unit_whose_actor_always_dies_stops_the_job_naming_it(ray_session, tiny_crops, model_path, tmp_path,
                                                                mlflow_uri):
    """The labeling actors are not restarted by Ray (a restartable actor pool prints a line of Ray's C++ core on
    the console): the pass itself runs again over the uncommitted units, --unit-retries times. A unit whose
    process dies on every attempt then stops the job with a WorkUnitLostError naming its shard; the units
    committed meanwhile stay, and the same command without the fault gives every row once."""
    from reid.core.errors import WorkUnitLostError

    shards = sorted(p.stem for p in (tiny_crops / "_manifest").glob("*.json"))
    doomed = shards[-1]
    out = tmp_path / "labels"
    cfg = label_config(tiny_crops, out, model_path, THRESHOLDS, mlflow_uri, name="label-lost-unit",
                       report_windows=0, max_actors=1, unit_retries=1, fail_shard=doomed)
    started = time.time()
    with pytest.raises(WorkUnitLostError, match=rf"label: a work unit's process died 2 times .*shard\(s\) not "
                                                rf"committed, e\.g\. \[.*'{doomed}'.*\]"):
        run_label(cfg)
    assert time.time() - started < 240
    committed = {p.stem for p in (out / "_windows" / "_manifest").glob("*.json")}
    assert doomed not in committed and not (out / "_SUCCESS").exists()
    run_label(label_config(tiny_crops, out, model_path, THRESHOLDS, mlflow_uri, name="label-lost-unit",
                           report_windows=0, max_actors=1, unit_retries=1))
    _assert_exactly_once(out, tiny_crops)
