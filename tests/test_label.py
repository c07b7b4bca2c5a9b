"""The label job on a real local Ray: exactly once after a kill, the Ray-free reference, unassigned rows,
series linking, evaluation against annotated sequences, fail-fast checks."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers.console import ray_core_lines
from helpers.labeling import cli_args, crop_ids, label_config, random_reid_model
from mlflow.tracking import MlflowClient
from PIL import Image

from reid.core.assign import link_windows
from reid.core.cli import run_main
from reid.core.contracts.crops import pair_rows
from reid.core.contracts.labels import row_id, split_row_id, window_id, window_panels
from reid.core.data.augment import eval_transform
from reid.core.data.formats import panel_image_path, read_instances, read_sequences
from reid.core.data.ids import panel_id, parse_instance_id, parse_panel_id
from reid.core.embedding import CharacterEmbedder, CropPreprocessor, decode_rgb
from reid.core.errors import CheckpointError, ConfigError, DataFormatError
from reid.core.label_window import crop_boxes, label_window
from reid.core.models import ModelConfig, ReIDNet, SSLNet, load_model_checkpoint, save_model_checkpoint
from reid.stages.label import LabelConfig, decoding_fused, pool_size, read_labels, run_label, sliding_windows
from reid.stages.report import write_report

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.ray, pytest.mark.slow]


# -- fixtures ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return random_reid_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def crops(tiny_crops, tmp_path_factory) -> tuple[Path, str, str]:
    """A copy of the shared crops (Parquet only) where one body crop (whose character has a face) no longer
    decodes. Returns (crops folder, id of the broken body crop, id of its character's face)."""
    out = tmp_path_factory.mktemp("label_crops")
    for name in ("data", "errors", "_manifest"):
        shutil.copytree(tiny_crops / name, out / name)
    for name in ("_SUCCESS", "_job.json"):
        shutil.copy(tiny_crops / name, out / name)
    path = sorted((out / "data").glob("*.parquet"))[0]
    table = pq.read_table(path)
    characters = pair_rows(table)
    broken, partner = next((c["body_id"], c["face_id"]) for c in characters if c["face_id"] and c["body_id"])
    images = [data[:20] if iid == broken else data
              for iid, data in zip(table["instance_id"].to_pylist(), table["image"].to_pylist(), strict=True)]
    table = table.set_column(table.schema.get_field_index("image"), "image", pa.array(images, pa.binary()))
    pq.write_table(table, path)
    return out, broken, partner


def _reference_embeddings(model_path: Path, crops_root: Path, broken: str) -> dict[str, tuple[dict, np.ndarray]]:
    """char key -> (character, embedding), without Ray or the job's code."""
    model, _, _ = load_model_checkpoint(str(model_path))
    embed = CharacterEmbedder(model, "cpu", batch_size=256)
    chars = [c for path in sorted((crops_root / "data").glob("*.parquet")) for c in pair_rows(pq.read_table(path))]
    faces = [decode_rgb(c["face"]) if c["face"] and c["face_id"] != broken else None for c in chars]
    bodies = [decode_rgb(c["body"]) if c["body"] and c["body_id"] != broken else None for c in chars]
    return {c["key"]: (c, e) for c, e in zip(chars, embed(faces, bodies), strict=True)}


@pytest.fixture(scope="module")
def reference(model_path, crops):
    return _reference_embeddings(model_path, crops[0], crops[1])


@pytest.fixture(scope="module")
def thresholds(reference) -> tuple[float, float]:
    """Window and link thresholds that split windows into several identities with this random model."""
    by_page = defaultdict(list)
    for char, embedding in reference.values():
        panel = parse_panel_id(char["panel_id"])
        by_page[(panel.series, panel.page)].append(embedding)
    distances = [np.linalg.norm(a - b) for e in by_page.values() for i, a in enumerate(e) for b in e[i + 1:]]
    threshold = float(np.median(distances))
    return threshold, threshold * 0.8


@pytest.fixture(scope="module")
def resumed(ray_session, crops, model_path, thresholds, tmp_path_factory, mlflow_uri):
    """Sliding windows: the driver is killed after its first shard (a subprocess), then the job is re-run."""
    out = tmp_path_factory.mktemp("labels") / "sliding"
    cfg = label_config(crops[0], out, model_path, thresholds, mlflow_uri, name="label-kill", report_windows=0)
    env = dict(os.environ)
    env.update(PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    first = subprocess.run([sys.executable, str(REPO / "jobs/label.py"), *cli_args(cfg), "--fail-after-shards", "1"],
                           env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 3, first.stderr[-3000:]
    committed_before = len(list((out / "_windows" / "_manifest").glob("*.json")))
    assert not (out / "_SUCCESS").exists() and not (out / "_windows" / "_SUCCESS").exists()
    result = run_label(cfg)
    return out, committed_before, result


@pytest.fixture(scope="module")
def annotated(ray_session, crops, model_path, thresholds, tmp_path_factory, mlflow_uri, tiny_corpus):
    """Exactly the annotated windows of the train split (overlapping), with evaluation and the report; the CPU
    defaults (1 CPU per actor and per decoding task, pool sized by the job: decoding fused into the actors that
    hold every CPU; the job would hang if Ray Data stopped fusing them)."""
    out = tmp_path_factory.mktemp("labels") / "annotated"
    defaults = LabelConfig()
    cfg = label_config(crops[0], out, model_path, thresholds, mlflow_uri, name="label-seq",
                  num_cpus_per_actor=defaults.num_cpus_per_actor, num_cpus_per_task=defaults.num_cpus_per_task,
                  max_actors=0,
                  sequences=str(tiny_corpus / "data/comics_seq/train_sequences.json"),
                  ground_truth=str(tiny_corpus / "ground_truth.csv"), report_windows=4, report_series=2)
    return out, cfg, run_label(cfg, report_writer=write_report)  # as jobs/label.py does


# -- helpers ----------------------------------------------------------------------------------------------

def _panel(instance_id: str) -> str:
    return str(parse_instance_id(instance_id).panel_id)


def _same_partition(a: dict, b: dict) -> bool:
    pairs = {(a[k], b[k]) for k in a}
    return set(a) == set(b) and len(pairs) == len(set(a.values())) == len(set(b.values()))


def _page_windows_brute_force(panel_ids: set[str], size: int) -> dict[str, str]:
    """panel id -> window id, blocks of ``size`` panel numbers per page (stride = size)."""
    pages = defaultdict(set)
    for p in map(parse_panel_id, panel_ids):
        pages[(p.series, p.page)].add(p.panel)
    out = {}
    for (series, page), panels in pages.items():
        n = max(panels) + 1
        for start in range(0, n, size):
            window = [panel_id(series, page, k) for k in range(start, min(start + size, n))]
            out.update(dict.fromkeys(window, window_id(window)))
    return out


# -- tests ------------------------------------------------------------------------------------------------

def test_sliding_windows():
    ids = [f"7_3_{k}" for k in (0, 1, 2, 3, 4, 5)]
    assert sliding_windows(ids, 4, 4) == ["7_3_0+7_3_1+7_3_2+7_3_3", "7_3_4+7_3_5"]
    assert sliding_windows(ids, 4, 2) == ["7_3_0+7_3_1+7_3_2+7_3_3", "7_3_2+7_3_3+7_3_4+7_3_5"]
    # panels 4..7 have no instance: no window there; the last one ends at the last panel with instances
    assert sliding_windows(["1_0_0", "1_0_9", "1_2_1"], 4, 4) == [
        "1_0_0+1_0_1+1_0_2+1_0_3", "1_0_8+1_0_9", "1_2_0+1_2_1"]


def test_pool_size_leaves_decoding_tasks_a_cpu_unless_fused():
    cfg = LabelConfig(model="m.pt")  # CPU defaults: 1 CPU per actor and per decoding task
    assert decoding_fused(cfg, 0) and not decoding_fused(cfg, 1.0)
    assert pool_size(cfg, 0, 100, {"CPU": 2}) == 2  # fused: decoding runs inside the 2 actors
    assert pool_size(cfg, 0, 1, {"CPU": 8}) == 1  # never more actors than work units
    apart = LabelConfig(model="m.pt", num_cpus_per_actor=1.75, num_cpus_per_task=0.25)
    assert not decoding_fused(apart, 0) and pool_size(apart, 0, 100, {"CPU": 2}) == 1
    assert pool_size(LabelConfig(model="m.pt", num_cpus_per_task=0.5), 0, 100, {"CPU": 2}) == 1
    assert pool_size(cfg, 1.0, 100, {"CPU": 16, "GPU": 4}) == 4  # one per GPU; decoding on the CPUs
    assert pool_size(cfg, 0.5, 100, {"CPU": 16, "GPU": 2}) == 4
    assert pool_size(LabelConfig(model="m.pt", max_actors=3), 0, 100, {"CPU": 2}) == 3


def test_label_units_are_rerun_a_bounded_number_of_times():
    """Ray Data re-runs a unit whose process died for ever by default (tasks max_retries=-1, actors max_restarts=-1,
    max_task_retries=-1): --unit-retries bounds the decoding tasks; the actors are not restarted at all, the pass
    runs again over the uncommitted units instead. The actor arguments are invalid for a task (Ray refuses them),
    so the two maps can no longer be fused: on CPUs the actors decode themselves."""
    from reid.stages.label.windows import unit_retry_args

    assert unit_retry_args(LabelConfig(model="m.pt", unit_retries=2)) == (
        {"max_retries": 2}, {"max_restarts": 0, "max_task_retries": 0})  # the pass re-runs itself (run_windows_pass)
    assert unit_retry_args(LabelConfig(model="m.pt"))[0] == {"max_retries": 3}
    with pytest.raises(ConfigError, match="unit_retries must be >= 0"):
        LabelConfig(model="m.pt", unit_retries=-1)


def test_embedder_pads_chunks_to_few_shapes_without_changing_embeddings():
    torch.manual_seed(0)
    model = ReIDNet(ModelConfig(arch="slim_resnet10", face_size=32, body_size=48)).eval()
    embed = CharacterEmbedder(model, "cpu", batch_size=12)
    assert [embed.padded_size(n) for n in (1, 8, 9, 11, 12)] == [8, 8, 12, 12, 12]
    rng = np.random.default_rng(0)
    n = 13  # chunks of 12 and 1: the second is padded to 8 rows
    face = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    body = rng.integers(0, 256, (n, 3, 48, 48), dtype=np.uint8)
    face_mask, body_mask = rng.random(n) < 0.7, np.ones(n, bool)
    face_mask[-1], body_mask[-2], face_mask[-2] = False, False, True  # body-only, face-only rows
    got = embed.embed_uint8(face, body, face_mask, body_mask)
    with torch.inference_mode():  # one row at a time, no padding
        want = np.concatenate([model(embed.preprocess.normalize(torch.from_numpy(face[i:i + 1]), "face"),
                                     embed.preprocess.normalize(torch.from_numpy(body[i:i + 1]), "body"),
                                     torch.from_numpy(face_mask[i:i + 1]), torch.from_numpy(body_mask[i:i + 1])
                                     ).numpy() for i in range(n)])
    assert got.shape == (n, model.config.embed_dim)
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.fault
def test_killed_job_resumes_with_every_instance_once(resumed, crops):
    out, committed_before, result = resumed
    total_shards = len(list((crops[0] / "_manifest").glob("*.json")))
    assert 1 <= committed_before < total_shards
    assert result["totals"]["shards_this_run"] == total_shards - committed_before
    labels = read_labels(str(out)).to_pylist()
    ok, failed = crop_ids(crops[0])
    ids = [r["instance_id"] for r in labels]
    assert len(ids) == len(set(ids)) == len(ok) + len(failed)  # stride = window size: one window each
    assert set(ids) == set(ok) | set(failed)
    windows = _page_windows_brute_force({_panel(i) for i in ids}, 4)
    for r in labels:
        assert r["window_id"] == windows[r["panel_id"]] and r["row_id"] == row_id(r["instance_id"], r["window_id"])
    success = json.loads((out / "_SUCCESS").read_text())
    assert success["rows"] + success["error_rows"] == len(ids)


def test_unassigned_rows_carry_the_reason(resumed, crops):
    out, _, _ = resumed
    crops_root, broken, partner = crops
    _, failed = crop_ids(crops_root)
    assert failed, "the shared corpus injects missing, corrupt and off-page faults"
    labels = {r["instance_id"]: r for r in read_labels(str(out)).to_pylist()}
    unassigned = {i: r for i, r in labels.items() if r["status"] == "unassigned"}
    assert set(unassigned) == set(failed) | {broken}
    for iid, reason in failed.items():
        assert unassigned[iid]["reason"] == reason and unassigned[iid]["identity"] is None
    assert unassigned[broken]["reason"].startswith("crop does not decode")
    # the broken body's face still has its character's identity
    assert labels[partner]["status"] == "assigned" and labels[partner]["identity"] is not None
    errors = pq.read_table(out / "errors").to_pylist()
    assert {split_row_id(e["id"])[0] for e in errors} == set(unassigned)


def test_job_matches_label_window_on_every_window(resumed, crops, model_path, thresholds):
    out, _, _ = resumed
    crops_root, broken, _ = crops
    model, _, _ = load_model_checkpoint(str(model_path))
    crop_rows = defaultdict(list)
    for r in pq.read_table(crops_root / "data").to_pylist():
        if r["instance_id"] != broken:
            crop_rows[r["panel_id"]].append(r)
    by_window = defaultdict(dict)
    for r in read_labels(str(out), include_unassigned=False).to_pylist():
        by_window[r["window_id"]][r["instance_id"]] = r["identity"]
    several = 0
    for window, job in by_window.items():
        panels = window_panels(window)
        rows = [r for p in panels for r in crop_rows[p]]
        boxes = [{"panel": panels.index(r["panel_id"]), "type": r["type"], "char_index": r["char_index"],
                  "image": r["image"]} for r in rows]
        identities = label_window(model, [], boxes, threshold=thresholds[0])
        assert _same_partition(job, {r["instance_id"]: k for r, k in zip(rows, identities, strict=True)}), window
        several += len(set(job.values())) > 1
    assert several >= 2, "the thresholds must give windows with several identities"


def test_face_and_body_share_labels_and_series_links_match_reference(resumed, reference, thresholds):
    out, _, _ = resumed
    rows = read_labels(str(out), include_unassigned=False).to_pylist()
    per_character = defaultdict(set)
    for r in rows:
        per_character[(r["window_id"], r["char_key"])].add((r["identity"], r["series_identity"]))
    assert all(len(v) == 1 for v in per_character.values())
    assert any(len({r["type"] for r in rows if r["char_key"] == k[1]}) == 2 for k in per_character)
    # reference: link_windows on the member embeddings (it computes the window centres itself), constrained as
    # the job is: two characters of one panel are never linked
    panel_of = {r["char_key"]: r["panel_id"] for r in rows}
    keys = sorted(per_character)
    window_labels = np.asarray([next(iter(per_character[k]))[0] for k in keys])
    series_ids = [parse_panel_id(window_panels(w)[0]).series for w, _ in keys]
    series_job = [(s, next(iter(per_character[k]))[1]) for s, k in zip(series_ids, keys, strict=True)]
    embeddings = np.stack([reference[char_key][1] for _, char_key in keys])
    expected = link_windows(embeddings, window_labels, np.asarray([w for w, _ in keys]), np.asarray(series_ids),
                            threshold=thresholds[1], members=[{panel_of[k]: k} for _, k in keys])
    assert _same_partition(dict(zip(keys, series_job, strict=True)), dict(zip(keys, expected.tolist(), strict=True)))
    window_clusters = {(w, k) for (w, _), k in zip(keys, window_labels, strict=True)}
    assert len(set(series_job)) < len(window_clusters), "linking must merge some window identities"


def test_rerun_of_a_finished_job_changes_nothing(resumed, crops, model_path, thresholds, mlflow_uri):
    out, _, _ = resumed
    before = sorted(read_labels(str(out)).column("row_id").to_pylist())
    cfg = label_config(crops[0], out, model_path, thresholds, mlflow_uri, name="label-kill", report_windows=0)
    result = run_label(cfg)
    assert result["totals"]["shards_this_run"] == 0
    assert sorted(read_labels(str(out)).column("row_id").to_pylist()) == before
    with pytest.raises(ConfigError, match="threshold"):
        run_label(label_config(crops[0], out, model_path, (0.5, 0.5), mlflow_uri, name="label-kill"))


def test_annotated_windows_every_pair_once_and_evaluated(annotated, crops, tiny_corpus, mlflow_uri):
    out, cfg, result = annotated
    ok, failed = crop_ids(crops[0])
    by_panel = defaultdict(list)
    for iid in [*ok, *failed]:
        by_panel[_panel(iid)].append(iid)
    sequences = read_sequences(cfg.sequences)
    expected = {row_id(i, s.seq_id) for s in sequences for p in s.panels for i in by_panel[str(p)]}
    row_ids = read_labels(str(out)).column("row_id").to_pylist()
    assert len(row_ids) == len(set(row_ids)) and set(row_ids) == expected
    assert len({split_row_id(r)[0] for r in row_ids}) < len(row_ids), "overlapping windows share instances"
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("ARI", "AMI", "bcubed_f1", "precision_at_1", "mean_average_precision_at_r", "gt_series_bcubed_f1"):
        assert key in metrics and -1.0 <= metrics[key] <= 1.0, key
    assert metrics["eval_instances"] > 0 and metrics["num_groups"] == len(sequences)
    assert metrics["rows"] + metrics["unassigned"] == len(row_ids)
    logged = MlflowClient(mlflow_uri).get_run(result["run_id"]).data.metrics
    assert logged["bcubed_f1"] == pytest.approx(metrics["bcubed_f1"]) and logged["rows"] == metrics["rows"]
    artifacts = [a.path for a in MlflowClient(mlflow_uri).list_artifacts(result["run_id"], "plots")]
    assert artifacts == ["plots/identities_per_series.png"]
    assert (out / "identities_per_series.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_each_series_task_scores_its_own_series_and_the_driver_only_aggregates(annotated):
    from reid.core.contracts.crops import series_of_shard
    from reid.core.contracts.labels import labels_output
    from reid.stages.label.evaluate import FIGURES_DIR, ground_truth_scores

    out, cfg, _ = annotated
    metrics = json.loads((out / "metrics.json").read_text())
    series = {series_of_shard(s) for s in labels_output(str(out)).committed()}
    figures = sorted((out / FIGURES_DIR).glob("*.json"))
    assert [int(f.stem) for f in figures] == sorted(series)
    # written by the series pass, before the output was finalised (the driver's fallback would come after)
    assert all(f.stat().st_mtime <= (out / "_SUCCESS").stat().st_mtime for f in figures)
    whole, per_series = ground_truth_scores(str(out), cfg.ground_truth)  # one pass over the whole output
    assert {k: metrics[k] for k in whole} == pytest.approx(whole)
    assert json.loads((out / "quality.json").read_text()) == per_series


def test_report_html_references_existing_pngs(annotated):
    out, _, result = annotated
    index = Path(result["report"])
    assert index == out / "report" / "index.html"
    sources = re.findall(r"<img src='([^']+)'", index.read_text())
    assert len(sources) >= 2
    for src in sources:
        assert not src.startswith("/") and "://" not in src
        with Image.open(index.parent / src) as image:
            assert image.format == "PNG" and image.width > 100


def test_crop_boxes_reproduce_the_crop_job(tiny_corpus, tiny_crops):
    instances = read_instances(str(tiny_corpus / "data/ssl/merged_face_body.csv")).set_index("instance_id")
    table = pq.read_table(tiny_crops / "data").to_pylist()[:12]
    for r in table:
        row = instances.loc[r["instance_id"]]
        panel = Image.open(panel_image_path(str(tiny_corpus), r["panel_id"]))
        (crop,) = crop_boxes([panel], [{"panel": 0, "type": r["type"], "box": (row.x_0, row.y_0, row.x1, row.y_1)}])
        stored = Image.open(io.BytesIO(r["image"])).convert("RGB")
        assert crop.size == stored.size
        assert np.abs(np.asarray(crop, float) - np.asarray(stored, float)).mean() < 4.0  # JPEG q95 only


def test_bad_inputs_fail_fast_with_clear_errors(crops, model_path, tmp_path, mlflow_uri, capsys):
    out = tmp_path / "labels"
    base = dict(crops=str(crops[0]), out=str(out), mlflow_uri=mlflow_uri)
    with pytest.raises(CheckpointError, match="nope.pt"):
        run_label(LabelConfig(model=str(tmp_path / "nope.pt"), **base))
    ssl = tmp_path / "ssl.pt"
    save_model_checkpoint(SSLNet(ModelConfig(arch="slim_resnet10", face_size=32, body_size=48)), str(ssl))
    with pytest.raises(CheckpointError, match="kind is 'ssl', expected 'reid'"):
        run_label(LabelConfig(model=str(ssl), **base))
    with pytest.raises(CheckpointError, match="face_size: checkpoint 32 != flag 96"):
        run_label(LabelConfig(model=str(model_path), face_size=96, **base))
    with pytest.raises(DataFormatError, match="no _SUCCESS"):
        run_label(LabelConfig(model=str(model_path), **{**base, "crops": str(tmp_path)}))
    with pytest.raises(ConfigError, match="not the CSV"):
        run_label(LabelConfig(model=str(model_path), instances=str(tmp_path / "other.csv"), **base))
    with pytest.raises(ConfigError, match="threshold"):
        LabelConfig(threshold=0)
    assert not out.exists()
    spec = importlib.util.spec_from_file_location("label_job", REPO / "jobs/label.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    assert run_main(job.main, ["--model", str(tmp_path / "nope.pt"), "--crops", str(crops[0]), "--out", str(out)]) == 2
    assert "error: CheckpointError:" in capsys.readouterr().err and not out.exists()


def _random_crops(n: int, seed: int = 0) -> tuple[list, list]:
    rng = np.random.default_rng(seed)
    faces = [Image.fromarray(rng.integers(0, 256, (37, 41, 3), dtype=np.uint8)) if i % 4 else None for i in range(n)]
    bodies = [Image.fromarray(rng.integers(0, 256, (63, 29, 3), dtype=np.uint8)) if i % 3 or faces[i] is None
              else None for i in range(n)]
    return faces, bodies


def test_uint8_preprocessing_equals_the_eval_transform_exactly():
    faces, bodies = _random_crops(12)
    pre = CropPreprocessor(32, 48)
    arrays = pre(faces, bodies)
    for kind, crops, size in (("face", faces, 32), ("body", bodies, 48)):
        reference = eval_transform(size, kind)
        for i, crop in enumerate(crops):
            assert arrays[f"{kind}_mask"][i] == (crop is not None)
            if crop is None:
                assert not arrays[kind][i].any()
                continue
            got = pre.normalize(torch.from_numpy(arrays[kind][i:i + 1]), kind)[0]
            assert torch.equal(got, reference(crop))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_embeddings_on_cuda_match_cpu():
    torch.manual_seed(0)
    model = ReIDNet(ModelConfig(arch="slim_resnet10", face_size=32, body_size=48))
    faces, bodies = _random_crops(64)
    cpu = CharacterEmbedder(model, "cpu")(faces, bodies)
    cuda = CharacterEmbedder(model, "cuda")(faces, bodies)
    assert np.abs(cpu - cuda).max() < 5e-3  # TF32 convolutions on the GPU


def test_a_default_label_job_prints_no_ray_core_line(tiny_crops, model_path, tmp_path, job_env, mlflow_uri,
                                                     ray_session):
    """`make demo`'s label stage with its defaults (1 CPU per actor and per decoding task: the actors decode their
    units; one actor, to keep the test short) run as a job on the tiny crops: its console has our lines and none
    of Ray's C++ core."""
    defaults = LabelConfig()
    cfg = label_config(tiny_crops, tmp_path / "labels", model_path, (0.5, 0.6), mlflow_uri, name="label-console",
                       num_cpus_per_actor=defaults.num_cpus_per_actor, num_cpus_per_task=defaults.num_cpus_per_task,
                       max_actors=1, report_windows=0)
    result = subprocess.run([sys.executable, str(REPO / "jobs/label.py"), *cli_args(cfg)], env=job_env,
                            capture_output=True, text=True, timeout=300)
    console = result.stdout + result.stderr
    assert result.returncode == 0, console[-3000:]
    assert "label: 100%" in console, console[-3000:]
    assert not ray_core_lines(console), console[-3000:]
