"""The crop job on a real local Ray: outputs, errors, geometry, exactly-once after a kill, fail-fast."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from helpers.console import ray_core_lines
from PIL import Image

from reid.core import config
from reid.core.contracts.crops import CROP_SCHEMA, crop_relpath, read_crops
from reid.core.data.formats import panel_image_path, read_instances
from reid.core.errors import ConfigError, DataFormatError
from reid.core.geometry import face_crop_box
from reid.runtime.raycluster import TASK_POOL_OVERRIDES, data_context
from reid.stages.crop import CropConfig, run_crop, shards_per_ray_task

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _all_ids(out) -> list[str]:
    crops = read_crops(str(out), ["instance_id"]).column("instance_id").to_pylist()
    errors = pq.read_table(str(out / "errors")).column("id").to_pylist()
    return crops + errors


def test_every_box_is_a_crop_or_an_error(tiny_corpus, tiny_crops):
    instances = read_instances(str(tiny_corpus / "data/ssl/merged_face_body.csv"))
    ids = _all_ids(tiny_crops)
    assert len(ids) == len(set(ids)) == len(instances)
    assert set(ids) == set(instances["instance_id"])
    success = json.loads((tiny_crops / "_SUCCESS").read_text())
    assert success["rows"] + success["error_rows"] == success["input_rows"] == len(instances)
    assert read_crops(str(tiny_crops)).schema.equals(CROP_SCHEMA)


def test_faults_are_recorded_with_reasons(tiny_corpus, tiny_crops):
    faults = json.loads((tiny_corpus / "faults.json").read_text())
    errors = pq.read_table(str(tiny_crops / "errors")).to_pandas()
    reasons = dict(zip(errors["id"], errors["reason"], strict=True))
    instances = read_instances(str(tiny_corpus / "data/ssl/merged_face_body.csv"))
    by_panel = instances.groupby("panel_id")["instance_id"].apply(list)
    for fault in faults["missing_images"]:
        for iid in by_panel[fault["panel_id"]]:
            assert reasons[iid] == "panel image not found"
    for fault in faults["corrupt_images"]:
        for iid in by_panel[fault["panel_id"]]:
            assert reasons[iid].startswith("cannot decode image")
    for fault in faults["offpage_whole"]:
        assert "no pixels inside" in reasons[fault["instance_id"]]
    for fault in faults["offpage_partial"]:  # clipped, not an error
        assert fault["instance_id"] not in reasons


def test_crops_match_geometry_and_seed_layout(tiny_corpus, tiny_crops):
    crops = read_crops(str(tiny_crops)).to_pandas()
    instances = read_instances(str(tiny_corpus / "data/ssl/merged_face_body.csv")).set_index("instance_id")
    face = crops[crops["type"] == "face"].iloc[0]
    row = instances.loc[face["instance_id"]]
    page = Image.open(panel_image_path(str(tiny_corpus), row.panel_id))
    expected = face_crop_box(row.x_0, row.y_0, row.x1, row.y_1, *page.size)
    assert tuple(face["box"]) == expected
    image = Image.open(io.BytesIO(face["image"]))
    assert image.size == (expected[2] - expected[0], expected[3] - expected[1])
    for _, crop in crops.iterrows():
        path = tiny_crops / crop_relpath(crop["type"], crop["series_id"], crop["page"], crop["panel"], crop["index"])
        assert path.read_bytes() == crop["image"]
    body = crops[crops["type"] == "body"].iloc[0]
    assert "/bodies/" in crop_relpath("body", body["series_id"], body["page"], body["panel"], body["index"])


def test_counts_logged_to_mlflow(tiny_crops, mlflow_uri):
    import mlflow

    mlflow.set_tracking_uri(mlflow_uri)
    runs = mlflow.search_runs(experiment_names=["comic-reid"], filter_string="tags.`reid.run_key` = 'fixture-crop'")
    assert len(runs) == 1
    success = json.loads((tiny_crops / "_SUCCESS").read_text())
    assert runs.iloc[0]["metrics.crops"] == success["rows"]
    assert runs.iloc[0]["metrics.errors"] == success["error_rows"]
    assert runs.iloc[0]["metrics.pages"] == 10  # 2 series x 5 pages


@pytest.mark.fault
def test_killed_job_resumes_exactly_once(tiny_corpus, tmp_path, ray_session, job_env, mlflow_uri):
    out = tmp_path / "crops"
    args = [sys.executable, str(REPO / "jobs/crop.py"), "--comics-root", str(tiny_corpus), "--out", str(out),
            "--pages-per-shard", "1", "--mlflow-uri", mlflow_uri, "--name", "crop-kill"]
    first = subprocess.run([*args, "--fail-after-shards", "3"], env=job_env, capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == 3, first.stderr[-2000:]
    assert not (out / "_SUCCESS").exists()
    committed_before = len(list((out / "_manifest").glob("*.json")))
    assert 3 <= committed_before < 10
    second = subprocess.run(args, env=job_env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    success = json.loads((out / "_SUCCESS").read_text())
    assert success["shards_this_run"] == success["shards"] - committed_before
    ids = _all_ids(out)
    expected = read_instances(str(tiny_corpus / "data/ssl/merged_face_body.csv"))["instance_id"]
    assert len(ids) == len(set(ids)) == len(expected) and set(ids) == set(expected)
    # a third run has nothing left to do and changes nothing
    third = subprocess.run(args, env=job_env, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0 and sorted(_all_ids(out)) == sorted(ids)


def test_malformed_csv_fails_fast_with_strict(tiny_corpus, tmp_path, job_env):
    corpus = tmp_path / "corpus"
    (corpus / "data/ssl").mkdir(parents=True)
    (corpus / "raw_panel_images").mkdir()
    frame = pd.read_csv(tiny_corpus / "data/ssl/merged_face_body.csv", dtype=str)
    frame.loc[5, "x1"] = "-"
    frame.to_csv(corpus / "data/ssl/merged_face_body.csv", index=False)
    result = subprocess.run([sys.executable, str(REPO / "jobs/crop.py"), "--comics-root", str(corpus),
                             "--out", str(tmp_path / "out"), "--strict"], env=job_env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    assert "merged_face_body.csv, line 7: column 'x1' must be a number" in result.stderr
    assert not (tmp_path / "out" / "data").exists()


def _corpus_with_bad_rows(tiny_corpus, tmp_path, mutations) -> tuple[Path, pd.DataFrame]:
    corpus = tmp_path / "corpus"
    (corpus / "data/ssl").mkdir(parents=True)
    (corpus / "raw_panel_images").symlink_to(tiny_corpus / "raw_panel_images")
    frame = pd.read_csv(tiny_corpus / "data/ssl/merged_face_body.csv", dtype=str)
    for row, column, value in mutations:
        frame.loc[row, column] = value
    frame.to_csv(corpus / "data/ssl/merged_face_body.csv", index=False)
    return corpus, frame


def test_bad_rows_are_recorded_and_the_job_goes_on(tiny_corpus, tiny_crops, tmp_path, mlflow_uri):
    """One inverted box and one page id that is a path among the rows: both recorded in errors/input.parquet
    with their line (read with the rest of errors/ by pandas), every other box cropped exactly once."""
    good = read_instances(str(tiny_corpus / "data/ssl/merged_face_body.csv"))
    corpus, frame = _corpus_with_bad_rows(tiny_corpus, tmp_path, [(5, "x1", "-1"), (9, "page_id", "../../etc_1")])
    out = tmp_path / "out"
    totals = run_crop(CropConfig(comics_root=str(corpus), out=str(out), pages_per_shard=2, mlflow_uri=mlflow_uri,
                                 name="bad-rows", max_bad_row_fraction=0.02))  # 2 of 172 rows: over the 1 % default
    assert totals["input_error_rows"] == 2 and totals["input_rows"] == len(good) - 2
    bad = [r for r in pd.read_parquet(out / "errors").to_dict("records") if r["stage"] == "input"]
    assert [(b["id"], b["stage"]) for b in bad] == [("line 7", "input"), ("line 11", "input")]
    assert "x1 (-1.0) < x_0" in bad[0]["reason"] and "'../../etc_1' is not '<page>_<panel>'" in bad[1]["reason"]
    assert all(b["source"].endswith("merged_face_body.csv") for b in bad)
    ids = read_crops(str(out), ["instance_id"]).column("instance_id").to_pylist() + [
        r["id"] for r in pq.read_table(out / "errors").to_pylist() if r["stage"] != "input"]
    expected = set(good["instance_id"]) - {good["instance_id"][5], good["instance_id"][9]}
    assert len(ids) == len(set(ids)) and set(ids) == expected


def test_too_many_bad_rows_refuse_the_file_before_any_work(tiny_corpus, tmp_path, mlflow_uri):
    corpus, frame = _corpus_with_bad_rows(tiny_corpus, tmp_path, [(i, "type", "hand") for i in range(0, 30, 3)])
    out = tmp_path / "out"
    with pytest.raises(DataFormatError, match=r"10 of \d+ rows are bad .*right file\? First: line 2: type must"):
        run_crop(CropConfig(comics_root=str(corpus), out=str(out), pages_per_shard=2, mlflow_uri=mlflow_uri,
                            name="bad-file"))
    assert not (out / "data").exists() and not (out / "_plan").exists() and not (out / "_SUCCESS").exists()
    totals = run_crop(CropConfig(comics_root=str(corpus), out=str(out), pages_per_shard=2, mlflow_uri=mlflow_uri,
                                 name="bad-file", max_bad_row_fraction=0.5))
    assert totals["input_error_rows"] == 10


def test_bad_config_and_changed_arguments_refused(tiny_corpus, tiny_crops, tmp_path):
    with pytest.raises(ConfigError, match="pages_per_shard must be >= 1"):
        CropConfig(pages_per_shard=0)
    copy = tmp_path / "copy"
    shutil.copytree(tiny_crops, copy)
    with pytest.raises(ConfigError, match="differs in \\['face_scale'\\]"):
        run_crop(CropConfig(comics_root=str(tiny_corpus), out=str(copy), pages_per_shard=2, face_scale=1.5))
    with pytest.raises(DataFormatError, match="incomplete"):
        read_crops(str(tmp_path))


def test_shards_per_task_keeps_four_tasks_per_cpu():
    cfg = CropConfig(shards_per_task=4)
    assert shards_per_ray_task(cfg, pending=128, cpus=2) == 4  # large job: 32 tasks of 4 shards
    assert shards_per_ray_task(cfg, pending=20, cpus=2) == 2  # 10 tasks
    assert shards_per_ray_task(cfg, pending=10, cpus=2) == 1  # small job (the kill test): one shard per task
    assert shards_per_ray_task(CropConfig(shards_per_task=1), pending=1000, cpus=2) == 1
    with pytest.raises(ConfigError, match="shards_per_task must be >= 1"):
        CropConfig(shards_per_task=0)


@pytest.mark.ray
def test_task_pool_datasets_run_without_resource_reservation(ray_session):
    ctx = ray_session.data.DataContext.get_current()
    before = ctx.op_resource_reservation_enabled
    with data_context(**TASK_POOL_OVERRIDES):
        ds = ray_session.data.range(4)
    assert ds.context.op_resource_reservation_enabled is False  # the dataset keeps the setting ...
    assert ctx.op_resource_reservation_enabled == before  # ... and the process-wide context is restored
    assert ds.count() == 4


def test_console_shows_our_lines_and_the_log_file_the_rest(tiny_corpus, tmp_path, ray_session, job_env, mlflow_uri):
    """What a user sees on a tiny job: the Ray line, our bar and our summary; none of Ray Data's execution
    plans or progress chatter, no FutureWarning. Those are in the job's log file, which the console names."""
    out = tmp_path / "crops"
    args = [sys.executable, str(REPO / "jobs/crop.py"), "--comics-root", str(tiny_corpus), "--out", str(out),
            "--pages-per-shard", "2", "--mlflow-uri", mlflow_uri, "--name", "crop-console"]
    result = subprocess.run(args, env=job_env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    console = result.stdout + result.stderr
    assert "INFO Ray: " in console and "worker logs in" in console
    assert "crop: 100%" in console and "box/s" in console
    assert "crops: " in console and "bad input rows left out" in console
    assert f"pandas.read_parquet('{out / 'errors'}')" in console and str(out / "errors" / "input.parquet") in console
    log = out / "logs" / "crop.log"
    assert f"log: {log}" in console
    for noise in ("Execution plan of Dataset", "Starting execution of Dataset", "FutureWarning",
                  "Progress bars disabled", "mlflow.store.db.utils"):
        assert noise not in console, noise
    assert not ray_core_lines(console), console[-3000:]
    assert "Execution plan of Dataset" in log.read_text()
    verbose = subprocess.run([*args, "--out", str(tmp_path / "again"), "--verbose"], env=job_env,
                             capture_output=True, text=True, timeout=300)
    assert verbose.returncode == 0 and "Execution plan of Dataset" in verbose.stdout + verbose.stderr


def test_panel_paths_that_are_no_image_are_error_rows(tmp_path):
    """A panel path that is a directory, a symlink out of the corpus (to /dev/zero), a link loop (unreadable) or a
    file over --max-image-bytes: each an error row naming the file and why, the shard committed, no Ray needed
    to show it (the crop task's own function)."""
    import numpy as np

    from reid.stages.crop import crop_shard, plan_shards

    corpus = tmp_path / "corpus"
    panels = corpus / "raw_panel_images" / "1"
    panels.mkdir(parents=True)
    (corpus / "data/ssl").mkdir(parents=True)
    small = Image.new("RGB", (40, 40), "red")
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8))
    small.save(panels / "0_0.jpg")
    (panels / "0_1.jpg").mkdir()
    (panels / "0_2.jpg").symlink_to("/dev/zero")
    (panels / "0_3.jpg").symlink_to(panels / "0_3.jpg")
    noise.save(panels / "0_4.jpg", quality=95)
    limit = (panels / "0_0.jpg").stat().st_size + 100
    assert (panels / "0_4.jpg").stat().st_size > limit
    rows = [f"1,0_{k},face,0,0,1,1,20,20,0.9" for k in range(5)]
    (corpus / "data/ssl/merged_face_body.csv").write_text(
        "series_id,page_id,type,index,char_index,x_0,y_0,x1,y_1,score\n" + "\n".join(rows) + "\n")
    cfg = CropConfig(comics_root=str(corpus), out=str(tmp_path / "out"), max_image_bytes=limit, write_files=False)
    (shard,), _, _, bad = plan_shards(cfg)
    summary = crop_shard(cfg, shard)
    assert (summary.rows, summary.error_rows, bad) == (1, 4, [])
    errors = pd.read_parquet(tmp_path / "out" / "errors")
    reasons = dict(zip(errors["id"], errors["reason"], strict=True))
    assert reasons == {
        "1_0_1_face_0": "panel image is a directory, not a file",
        "1_0_2_face_0": "panel image is a symlink leading outside the corpus (to /dev/zero)",
        "1_0_3_face_0": reasons["1_0_3_face_0"],
        "1_0_4_face_0": f"panel image is {(panels / '0_4.jpg').stat().st_size} bytes, more than the limit of "
                        f"{limit} (--max-image-bytes)"}
    assert reasons["1_0_3_face_0"].startswith("panel image cannot be read (")
    assert dict(zip(errors["id"], errors["source"], strict=True))["1_0_1_face_0"] == str(panels / "0_1.jpg")


@pytest.mark.fault
def test_a_shard_whose_process_always_dies_stops_the_job_naming_it(tiny_corpus, tmp_path, ray_session, mlflow_uri):
    """A crop task killed on every attempt (as for memory) is re-run --unit-retries times, not for ever (Ray
    Data's default); then the job stops with a WorkUnitLostError naming the shard, and the same command without
    the fault resumes from the committed shards to every box exactly once."""
    from reid.core.contracts.crops import shard_id
    from reid.core.errors import WorkUnitLostError

    first = read_instances(str(tiny_corpus / "data/ssl/merged_face_body.csv")).iloc[0]
    doomed = shard_id(int(first["series_id"]), int(first["page"]), 2)
    out = tmp_path / "out"
    cfg = CropConfig(comics_root=str(tiny_corpus), out=str(out), pages_per_shard=2, mlflow_uri=mlflow_uri,
                     name="crop-lost-unit", shards_per_task=1, unit_retries=1, fail_shard=doomed, write_files=False)
    started = time.time()
    with pytest.raises(WorkUnitLostError, match=rf"crop: a work unit's process died 2 times .*not committed, e\.g\. "
                                                rf"\[.*'{doomed}'.*\]"):
        run_crop(cfg)
    assert time.time() - started < 180
    assert not (out / "_SUCCESS").exists() and not (out / "_manifest" / f"{doomed}.json").exists()
    totals = run_crop(CropConfig(**{**config.to_dict(cfg), "fail_shard": ""}))
    assert totals["rows"] + totals["error_rows"] == totals["input_rows"] == len(_all_ids(out))


@pytest.mark.ray
def test_ray_started_here_retries_a_unit_killed_for_memory_a_bounded_number_of_times(ray_session):
    """Ray's memory monitor re-runs a killed task on its own counter, RAY_task_oom_retries, for ever by default
    (-1): the Ray a job starts gets --unit-retries' default instead, in its system config and its raylet's
    environment, as does a node of reid.runtime.localcluster."""
    import ray._private.worker as worker
    from helpers.raylets import session_raylets

    from reid.runtime.localcluster import LocalClusterConfig
    from reid.runtime.localcluster.ray_nodes import RayNodes
    from reid.runtime.raycluster import UNIT_RETRIES

    raylets = session_raylets()
    assert raylets[0].environ().get("RAY_task_oom_retries") == str(UNIT_RETRIES)
    assert worker._global_node._ray_params._system_config["task_oom_retries"] == UNIT_RETRIES
    nodes = RayNodes(LocalClusterConfig(), Path("/nonexistent"), "c1")  # only its environment is read
    assert nodes.node_env("head", {**os.environ, "RAY_ADDRESS": "x"})["RAY_task_oom_retries"] == str(UNIT_RETRIES)


@pytest.mark.ray
def test_ray_started_here_reuses_idle_task_workers(ray_session):
    """Ray's default soft limit (the node's CPU count) ends the idle workers of a burst of concurrent tasks
    within seconds, and the next burst starts (and imports torch into) new processes: a Ray Data pipeline does
    that every epoch. The Ray a job starts keeps them, as does a node of reid.runtime.localcluster."""
    import time

    import psutil
    import ray._private.worker as worker

    from reid.runtime.localcluster import LocalClusterConfig
    from reid.runtime.localcluster.ray_nodes import RayNodes
    from reid.runtime.raycluster import WORKER_SOFT_LIMIT

    ray = ray_session
    assert worker._global_node._ray_params._system_config["num_workers_soft_limit"] >= WORKER_SOFT_LIMIT
    nodes = RayNodes(LocalClusterConfig(), Path("/nonexistent"), "c1")  # only its environment is read
    node_env = nodes.node_env("head", {**os.environ, "RAY_ADDRESS": "x"})
    assert int(node_env["RAY_num_workers_soft_limit"]) >= WORKER_SOFT_LIMIT

    @ray.remote(num_cpus=0.25)
    def pid() -> int:
        time.sleep(1.0)  # the six run at once, in six worker processes
        return os.getpid()

    workers = set(ray.get([pid.remote() for _ in range(6)]))
    time.sleep(3)  # with Ray's default, four of the six are gone by now
    gone = [p for p in workers if not psutil.pid_exists(p) or psutil.Process(p).status() == psutil.STATUS_ZOMBIE]
    assert gone == [], f"{len(gone)} of {len(workers)} idle task workers ended"


def _small_corpus(root: Path, panels: int) -> Path:
    """A corpus of ``panels`` red panels of series 1, page 0, one face box each."""
    (root / "raw_panel_images" / "1").mkdir(parents=True)
    (root / "data/ssl").mkdir(parents=True)
    for k in range(panels):
        Image.new("RGB", (40, 40), "red").save(root / "raw_panel_images" / "1" / f"0_{k}.jpg")
    _write_instances(root, range(panels))
    return root


def _write_instances(root: Path, panels) -> None:
    rows = [f"1,0_{k},face,0,0,1,1,20,20,0.9" for k in panels]
    (root / "data/ssl/merged_face_body.csv").write_text(
        "series_id,page_id,type,index,char_index,x_0,y_0,x1,y_1,score\n" + "\n".join(rows) + "\n")


def test_a_resume_with_an_edited_instance_csv_is_refused(tmp_path, ray_session, mlflow_uri):
    """Same paths, other contents: the re-run names the changed file instead of keeping stale crops; another --out
    starts fresh."""
    corpus = _small_corpus(tmp_path / "corpus", 3)
    cfg = CropConfig(comics_root=str(corpus), out=str(tmp_path / "out"), mlflow_uri=mlflow_uri, name="crop-edited",
                     write_files=False)
    assert run_crop(cfg)["rows"] == 3
    assert run_crop(cfg)["rows"] == 3  # unchanged: resumes (nothing to do)
    _write_instances(corpus, [0, 1])
    with pytest.raises(ConfigError, match=r"holds output of a job with other inputs or arguments \(instances "
                                          r"changed: \d+ -> \d+ bytes, sha256 \w{12} -> \w{12}\).*another --out"):
        run_crop(cfg)
    assert run_crop(CropConfig(**{**config.to_dict(cfg), "out": str(tmp_path / "fresh")}))["rows"] == 2


def test_the_plan_is_rebuilt_never_appended(tmp_path):
    """A chunk left in _plan/ by an earlier run (a longer CSV) is never read with this run's plan."""
    from reid.stages.crop import _read_plan, plan_shards

    corpus = _small_corpus(tmp_path / "corpus", 2)
    cfg = CropConfig(comics_root=str(corpus), out=str(tmp_path / "out"), write_files=False)
    (shard,), rows, _, _ = plan_shards(cfg)
    stale = tmp_path / "out" / "_plan" / shard / "000009.parquet"
    stale.write_bytes((tmp_path / "out" / "_plan" / shard / "000000.parquet").read_bytes())
    assert _read_plan(cfg, shard).num_rows == 2 * rows  # what a re-run read before
    (shard,), rows, _, _ = plan_shards(cfg)
    assert not stale.exists() and _read_plan(cfg, shard).num_rows == rows == 2


def test_a_comics_root_without_panel_images_is_refused_before_any_work(tmp_path):
    """``--comics-root`` pointing one folder too high or low: refused on the driver, naming the folder and what
    it should hold; nothing written."""
    (tmp_path / "data").mkdir()
    out = tmp_path / "crops"
    with pytest.raises(DataFormatError, match=r"no raw_panel_images/ folder here: is --comics-root the corpus root"):
        run_crop(CropConfig(comics_root=str(tmp_path), out=str(out)))
    assert not out.exists()
