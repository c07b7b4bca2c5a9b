"""Sweeps: the threshold choice on a constructed example with a known answer, the sweep configs, and tiny real
sweeps on one local Ray instance (pretrain interrupted then resumed; the pipeline's finetune sweep on its
model, then the finetune stage with the winning values; threshold on a fine-tuned trial's model), with the
MLflow parent and child runs and the best configs the jobs load."""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import json
import logging
import os
import pathlib
import warnings

import mlflow
import numpy as np
import pytest
from scipy.sparse.csgraph import minimum_spanning_tree
from scipy.spatial.distance import pdist, squareform

from reid.core import config
from reid.core.errors import ConfigError
from reid.stages.sweeps.finetune import FinetuneSweepConfig, published_metric
from reid.stages.sweeps.pretrain import PretrainSweepConfig
from reid.stages.sweeps.threshold import (
    ThresholdSweepConfig,
    choose_threshold,
    distance_histogram_png,
    grid_scores,
    pair_distances,
)
from reid.stages.sweeps.trials import (
    SweepInterruptedError,
    best_row,
    concurrent_trials,
    job_config,
    published_score,
)
from reid.stages.train.finetune import SELECT_METRIC, FinetuneConfig
from reid.stages.train.pretrain import PretrainConfig

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_MODEL = ["--face-size", "32", "--body-size", "48", "--workers", "2", "--cpus-per-worker", "0.5", "--epochs", "1",
              "--samples", "2", "--max-failures", "0", "--controller-failure-limit", "1", "--trial-max-failures", "0"]
# Deprecation messages seen in the sweep logs that are not Ray Tune/Train API use of ours:
KNOWN_DEPRECATIONS = (
    # torch, in reid/core/losses/ntxent.py (not Ray)
    "torch.distributed.nn.functional.all_gather is deprecated",
)


# ------------------------------------------------------------------------------------- threshold (no Ray)

def _windows(rng: np.random.Generator, count: int, dim: int = 8, noise: float = 0.04):
    """Windows of 2-4 identities: instances scattered tightly around orthonormal centres (a wide gap)."""
    embeddings, labels, groups = [], [], []
    for w in range(count):
        k = int(rng.integers(2, 5))
        centres = np.linalg.qr(rng.normal(size=(dim, dim)))[0][:k]
        for identity in range(k):
            n = int(rng.integers(2, 5))
            embeddings.append(centres[identity] + noise * rng.normal(size=(n, dim)))
            labels += [w * 10 + identity] * n
            groups += [w] * n
    return np.concatenate(embeddings), np.asarray(labels), np.asarray(groups)


def _single_linkage_perfect_interval(embeddings, labels, groups):
    """Brute force: single linkage recovers every identity iff max MST edge within one < t <= min between."""
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    within, between = 0.0, np.inf
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        dist = squareform(pdist(unit[idx]))
        same = labels[idx][:, None] == labels[idx][None, :]
        between = min(between, dist[~same].min())
        for identity in np.unique(labels[idx]):
            members = np.flatnonzero(labels[idx] == identity)
            within = max(within, minimum_spanning_tree(dist[np.ix_(members, members)]).toarray().max())
    return within, between


def test_threshold_choice_is_the_middle_of_the_known_perfect_interval():
    embeddings, labels, groups = _windows(np.random.default_rng(0), count=6)
    low, high = _single_linkage_perfect_interval(embeddings, labels, groups)
    assert 0.05 < low < high < 1.9  # the construction leaves a wide gap
    thresholds = np.linspace(0.05, 1.9, 38)
    rows = grid_scores(embeddings, labels, groups, thresholds, ("single",))
    perfect = [r["threshold"] for r in rows if r["AMI"] > 1 - 1e-9]
    inside = [t for t in thresholds if low < t <= high]
    assert perfect == pytest.approx(inside)  # the grid scores agree with the brute-force interval
    best = choose_threshold(rows, "AMI")
    assert best["threshold"] == pytest.approx(inside[(len(inside) - 1) // 2])
    assert abs(best["threshold"] - (low + high) / 2) <= 0.05 + 1e-9


def test_threshold_choice_prefers_the_best_score_over_a_wider_plateau():
    rows = [{"linkage": "average", "threshold": t, "AMI": a} for t, a in
            [(0.1, 0.5), (0.2, 0.5), (0.3, 0.5), (0.4, 0.5), (0.5, 0.9), (0.6, 0.7)]]
    rows += [{"linkage": "complete", "threshold": t, "AMI": a} for t, a in [(0.1, 0.9), (0.2, 0.9), (0.3, 0.2)]]
    assert choose_threshold(rows, "AMI") == {"linkage": "complete", "threshold": 0.1, "AMI": 0.9}
    rows[-1]["AMI"] = 0.9  # now complete has three tied points: its middle one
    assert choose_threshold(rows, "AMI")["threshold"] == 0.2


def test_pair_distances_match_brute_force_and_the_histogram_renders():
    embeddings, labels, groups = _windows(np.random.default_rng(1), count=3)
    positive, negative = pair_distances(embeddings, labels, groups)
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    expected_pos, expected_neg = [], []
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        for a in range(len(idx)):
            for b in range(a + 1, len(idx)):
                d = float(np.linalg.norm(unit[idx[a]] - unit[idx[b]]))
                (expected_pos if labels[idx[a]] == labels[idx[b]] else expected_neg).append(d)
    assert sorted(positive) == pytest.approx(sorted(expected_pos))
    assert sorted(negative) == pytest.approx(sorted(expected_neg))
    png = distance_histogram_png(positive, negative, 0.8, "test")
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000


# ------------------------------------------------------------------------------------------ configs

def test_concurrent_trials_from_cluster_resources():
    assert concurrent_trials({"CPU": 2.0}, 2, 0.5, False, 0.5, 0.1) == 1  # this laptop: 1.6 CPUs a trial
    assert concurrent_trials({"CPU": 16.0}, 2, 0.5, False, 0.5, 0.1) == 10
    assert concurrent_trials({"CPU": 64.0, "GPU": 8.0}, 4, 1.0, True, 0.5, 0.1) == 2  # GPUs limit
    assert concurrent_trials({"CPU": 1.0}, 4, 1.0, False, 0.5, 0.1) == 1  # never 0


def test_sweep_configs_carry_every_job_flag_and_check_their_ranges(tmp_path):
    cfg = config.parse_config(PretrainSweepConfig, ["--crops", "C", "--arch", "resnet18", "--samples", "3",
                                                    "--workers", "1", "--batch-size", "8"])
    job = job_config(cfg, PretrainConfig, temperature=0.2)
    # path flags are made absolute on the driver (Ray workers run elsewhere)
    assert (job.crops, job.arch, job.workers, job.batch_size, job.temperature) == (
        os.path.abspath("C"), "resnet18", 1, 8, 0.2)
    assert cfg.name == "pretrain-sweep" and cfg.samples == 3
    config.save_yaml(job, str(tmp_path / "job.yaml"))  # a job YAML is also a valid sweep base config
    assert config.parse_config(PretrainSweepConfig, ["--config", str(tmp_path / "job.yaml")]).arch == "resnet18"
    for bad in (["--temperature-min", "0.6"], ["--lr-min", "1e-4"], ["--grace-period", "5", "--epochs", "2"]):
        with pytest.raises(ConfigError):
            config.parse_config(PretrainSweepConfig, bad)
    with pytest.raises(ConfigError, match="pos_margin_max < neg_margin_min"):
        config.parse_config(FinetuneSweepConfig, ["--pos-margin-max", "0.7"])
    with pytest.raises(ConfigError):
        config.parse_config(ThresholdSweepConfig, ["--linkages", "average,ward"])


def test_best_row_skips_errors_and_nan_and_prefers_trials_that_published_a_model():
    rows = [{"trial": "a", "status": "error", "score": 0.9}, {"trial": "b", "status": "finished", "score": float("nan")},
            {"trial": "c", "status": "finished", "score": 0.4}, {"trial": "d", "status": "stopped early", "score": 0.5},
            {"trial": "e", "status": "finished", "score": 0.3}]
    assert best_row(rows, "max")["trial"] == "c"  # d scored higher but was stopped early: no final model
    assert best_row(rows, "min")["trial"] == "e"
    assert best_row(rows[:2], "max") is None
    assert best_row(rows[:4:3], "max")["trial"] == "d"  # no finished trial: the best stopped early


def test_a_trial_is_scored_on_the_model_it_publishes():
    import pandas as pd

    history = pd.DataFrame({"epoch": [0, 1, 2], SELECT_METRIC: [0.5, 0.9, 0.6],
                            f"best_{SELECT_METRIC}": [0.5, 0.9, 0.9]})
    last = FinetuneSweepConfig(select="last")
    best = FinetuneSweepConfig(select="best")
    # --select last publishes the last epoch's model (0.6), not the best epoch's (0.9)
    assert published_score(history, published_metric(last)) == pytest.approx(0.6)
    assert published_score(history, published_metric(best)) == pytest.approx(0.9)
    assert np.isnan(published_score(history, "missing"))
    with pytest.raises(ConfigError, match="val_every"):
        FinetuneSweepConfig(val_every=2)
    with pytest.raises(ConfigError, match="search"):
        FinetuneSweepConfig(search="grid")


def test_tpe_models_the_results_within_a_small_budget():
    """Optuna's default of 10 random start-up trials would make a sweep of 8 random from start to end."""
    from optuna.samplers import TPESampler
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    from reid.stages.sweeps.trials import searcher, tpe_startup_trials

    assert [tpe_startup_trials(n) for n in (1, 4, 8, 16, 40, 100)] == [2, 2, 2, 4, 10, 10]
    tpe = searcher(FinetuneSweepConfig(samples=8, search_seed=3), max_concurrent=1)
    assert isinstance(tpe, ConcurrencyLimiter) and isinstance(tpe.searcher._sampler, TPESampler)
    assert tpe.searcher._sampler._n_startup_trials == 2
    assert isinstance(searcher(FinetuneSweepConfig(search="random"), max_concurrent=1), BasicVariantGenerator)


# ------------------------------------------------------------------------------- real sweeps on Ray

class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _worker_logs(session_dir: str) -> dict[str, int]:
    return {p: os.path.getsize(p) for p in glob.glob(os.path.join(session_dir, "logs", "worker-*"))}


@pytest.fixture(scope="module")
def ray_env(ray_session):
    """The session's local Ray (its own GCS port and RAY_ADDRESS, 2 CPUs, dashboard on: Tune-around-Train needs
    it), a record of the driver's Ray log warnings, and where the worker logs stood before the sweeps."""
    import ray

    session_dir = ray._private.worker._global_node.get_session_dir_path()
    records = _Records()
    logging.getLogger("ray").addHandler(records)
    try:
        yield {"session_dir": session_dir, "log_offsets": _worker_logs(session_dir), "records": records}
    finally:
        logging.getLogger("ray").removeHandler(records)


@pytest.fixture(scope="module")
def corpus(ray_env, tmp_path_factory):
    from reid.core.data.synthetic import generate_corpus, preset_config
    from reid.stages.crop import CropConfig, run_crop

    root = tmp_path_factory.mktemp("sweeps")
    # seed 1: 6 held-out instances with a face and a body (the pretrain sweep's metric needs >= 2)
    generate_corpus(str(root / "corpus"), preset_config("tiny", pages=5, seed=1))
    uri = f"sqlite:///{root}/mlflow.db"
    run_crop(CropConfig(comics_root=str(root / "corpus"), out=str(root / "crops"), pages_per_shard=2,
                        num_cpus_per_task=0.5, mlflow_uri=uri))
    return {"root": root, "crops": str(root / "crops"), "sequences": str(root / "corpus/data/comics_seq"),
            "storage": str(root / "runs"), "mlflow": uri}


@contextlib.contextmanager
def _recorded_warnings(into: list):
    """Record every Python warning of the block (innermost, so pytest's own capture does not hide them)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    into.extend(caught)


def _entry_point(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "tune" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _runs(uri: str, run_key: str):
    """(parent run, its child runs) of the sweep whose MLflow run key is ``run_key``."""
    mlflow.set_tracking_uri(uri)
    parent = mlflow.search_runs(experiment_names=["comic-reid"], filter_string=f"tags.`reid.run_key` = '{run_key}'",
                                output_format="list")
    assert len(parent) == 1
    children = mlflow.search_runs(experiment_names=["comic-reid"], output_format="list",
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent[0].info.run_id}'")
    return parent[0], children


def _trial_state(folder: pathlib.Path) -> dict[str, tuple]:
    """Per finished trial run: (model.pt mtime, its checkpoint dirs): changes if a trial ran again."""
    return {p.parent.parent.name: (p.stat().st_mtime_ns, sorted(c.name for c in p.parent.parent.glob("checkpoint_*")))
            for p in folder.glob("trials/*/final/model.pt")}


@pytest.fixture(scope="module")
def pretrain_sweep(corpus):
    """A 2-trial pretrain sweep interrupted (injected, like Ctrl-C) after its first trial, then resumed."""
    main = _entry_point("sweep_pretrain")
    argv = ["--crops", corpus["crops"], "--storage", corpus["storage"], "--mlflow-uri", corpus["mlflow"],
            "--arch", "slim_resnet10", "--batch-size", "16", "--fault-after-trials", "1", *TINY_MODEL]
    folder = pathlib.Path(corpus["storage"]) / "pretrain-sweep"
    caught: list = []
    with _recorded_warnings(caught), pytest.raises(SweepInterruptedError, match="stopped after 1 of 2 trials"):
        main(argv)
    interrupted = {"trials": _trial_state(folder), "runs": _runs(corpus["mlflow"], "pretrain-sweep")}
    with _recorded_warnings(caught):
        main(argv)  # the same command again resumes
    return {"folder": folder, "interrupted": interrupted, "warnings": caught}


@pytest.mark.ray
@pytest.mark.fault
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_pretrain_sweep_resumes_without_rerunning_the_finished_trial(pretrain_sweep, corpus):
    folder, before = pretrain_sweep["folder"], pretrain_sweep["interrupted"]
    parent, children = before["runs"]
    assert len(before["trials"]) == 1 and parent.info.status == "KILLED" and len(children) == 1
    after = _trial_state(folder)
    assert len(after) == 2
    (first,) = before["trials"]
    assert after[first] == before["trials"][first]  # the finished trial was not run again
    parent, children = _runs(corpus["mlflow"], "pretrain-sweep")
    assert parent.info.status == "FINISHED" and len(children) == 2
    assert sorted(c.data.tags["reid.run_key"] for c in children) == sorted(after)
    resumed = [c for c in children if c.data.tags["reid.run_key"] == first][0]
    assert "reid.resumed" not in resumed.data.tags and "restart_epoch" not in resumed.data.metrics
    for child in children:
        assert 0.03 <= float(child.data.params["temperature"]) <= 0.5
        assert child.data.metrics["epoch"] == 0 and np.isfinite(child.data.metrics["val_face_body_p1"])
    results = sorted(glob.glob(str(folder / "tune" / "*" / "result.json")))
    assert [len(pathlib.Path(r).read_text().splitlines()) for r in results] == [1, 1]  # one epoch each, once


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_pretrain_best_config_loads_into_the_pretrain_job(pretrain_sweep):
    folder = pretrain_sweep["folder"]
    best = config.parse_config(PretrainConfig, ["--config", str(folder / "best.yaml")])
    rows = (folder / "summary.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("trial,status,temperature,score")
    scores = {r.split(",")[0]: (float(r.split(",")[2]), float(r.split(",")[3])) for r in rows[1:]}
    top = max(scores.values(), key=lambda s: s[1])
    assert best.temperature == pytest.approx(top[0]) and best.name == "pretrain-sweep-best"
    assert (best.arch, best.face_size, best.workers, best.epochs) == ("slim_resnet10", 32, 2, 1)
    assert (folder / "summary.md").read_text().count("\n| ") == 3  # header + 2 trials


@pytest.fixture(scope="module")
def finetune_sweep(pretrain_sweep, corpus):
    """``jobs/pipeline.py --sweep-trials 2`` run in this process from the pretrain sweep's SSL model: a 2-trial
    fine-tuning sweep (Optuna, the default searcher), then the finetune stage trained with the winning values.
    One sweep serves the fine-tuning sweep's tests, the threshold sweep's and the pipeline's."""
    import shutil

    from reid.stages.pipeline import PipelineConfig, paths, run_pipeline

    cfg = PipelineConfig(out=str(corpus["root"]), stages="finetune", sweep_trials=2, arch="slim_resnet10",
                         face_size=32, body_size=48, finetune_epochs=1, sequences_per_batch=4, name_prefix="pipe",
                         mlflow_uri=corpus["mlflow"])
    p = paths(cfg)
    ssl = sorted(pretrain_sweep["folder"].glob("trials/*/final/model.pt"))[0]
    os.makedirs(os.path.dirname(p["ssl_model"]), exist_ok=True)
    shutil.copy(ssl, p["ssl_model"])
    caught: list = []
    with _recorded_warnings(caught):
        run_pipeline(cfg)
    return {"folder": pathlib.Path(p["sweep_best"]).parent, "cfg": cfg, "paths": p, "warnings": caught}


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_finetune_sweep_tracks_rank0_validation_and_writes_a_loadable_best_config(finetune_sweep, corpus):
    folder = finetune_sweep["folder"]
    best = config.parse_config(FinetuneConfig, ["--config", str(folder / "best.yaml")])
    assert 0.0 <= best.pos_margin <= 0.3 and 0.6 <= best.neg_margin <= 1.4 and 1e-4 <= best.lr <= 3e-3
    assert best.name == "pipe-finetune-sweep-best" and best.sequences_per_batch == 4
    # Tune saw rank 0's validation MAP@R (the other ranks report NaN) at every epoch of every trial
    for result in glob.glob(str(folder / "tune" / "*" / "result.json")):
        reports = [json.loads(line) for line in pathlib.Path(result).read_text().splitlines()]
        assert reports and all(np.isfinite(r[SELECT_METRIC]) for r in reports)
    parent, children = _runs(corpus["mlflow"], "pipe-finetune-sweep")
    assert parent.info.status == "FINISHED" and len(children) == 2
    assert any((float(c.data.params["pos_margin"]), float(c.data.params["neg_margin"]), float(c.data.params["lr"]))
               == (best.pos_margin, best.neg_margin, best.lr) for c in children)  # best.yaml = one trial's values
    assert all(np.isfinite(c.data.metrics[SELECT_METRIC]) for c in children)
    assert all(c.data.tags["reid.stage"] == "finetune" for c in children)
    assert np.isfinite(parent.data.metrics["best_score"])


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_threshold_sweep_is_the_calibration_fine_tuning_stored(finetune_sweep, corpus, capsys):
    from reid.core.models.checkpoint import load_model_checkpoint
    from reid.stages.label import LabelConfig
    from reid.stages.label.config import resolve_thresholds

    model = [p for p in finetune_sweep["folder"].glob("trials/*/final/model.pt")][0]
    base = ["--model", str(model), "--crops", corpus["crops"], "--sequences", corpus["sequences"], "--storage",
            corpus["storage"], "--mlflow-uri", corpus["mlflow"]]
    _entry_point("sweep_threshold")(base)
    assert "chosen:" in capsys.readouterr().out
    folder = pathlib.Path(corpus["storage"]) / "threshold-sweep"
    label = config.parse_config(LabelConfig, ["--config", str(folder / "best.yaml")])
    rows = (folder / "summary.csv").read_text().splitlines()[1:]
    assert len(rows) == 37 * 3  # the calibration grid, every linkage
    best_ami = max(float(r.split(",")[2]) for r in rows)
    chosen = [r for r in rows if r.split(",")[0] == label.linkage and float(r.split(",")[1]) == label.threshold]
    assert len(chosen) == 1 and float(chosen[0].split(",")[2]) == pytest.approx(best_ami)
    assert label.model == str(model) and label.link_threshold >= label.threshold
    assert (folder / "distances.png").read_bytes().startswith(b"\x89PNG")
    parent, children = _runs(corpus["mlflow"], "threshold-sweep")
    assert parent.info.status == "FINISHED" and len(children) == 3
    assert parent.data.metrics["best_threshold"] == pytest.approx(label.threshold)
    assert parent.data.metrics["best_link_threshold"] == pytest.approx(label.link_threshold)

    # with fine-tuning's linkage, the sweep's best.yaml is what fine-tuning stored in the checkpoint
    _entry_point("sweep_threshold")([*base, "--linkages", "average", "--name", "threshold-average"])
    same = config.parse_config(LabelConfig, ["--config", str(pathlib.Path(corpus["storage"]) / "threshold-average"
                                                          / "best.yaml")])
    _, _, extra = load_model_checkpoint(str(model))
    stored = extra["calibration"]
    assert (same.threshold, same.link_threshold, same.linkage, same.link_distance, same.link_constraint) == (
        stored["threshold"], stored["link_threshold"], stored["linkage"], stored["link_distance"],
        stored["link_constraint"])
    # the label job records where its thresholds came from
    _, sources = resolve_thresholds(same, extra)
    assert sources["threshold"] == sources["link_threshold"] == same.thresholds_from
    assert same.thresholds_from.startswith("threshold sweep threshold-average")
    _, sources = resolve_thresholds(config.replace(same, threshold=None, link_threshold=None), extra)
    assert sources["threshold"].startswith("checkpoint calibration")


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_pipeline_sweeps_then_fine_tunes_with_the_winning_values(finetune_sweep, corpus):
    """``--sweep-trials``: a fine-tuning sweep before the finetune stage, whose final model is trained with the
    winning trial's margins and learning rate."""
    cfg, p = finetune_sweep["cfg"], finetune_sweep["paths"]
    assert cfg.run_order == ["sweep", "finetune"]
    best = config.load_yaml(p["sweep_best"])
    rows = (pathlib.Path(p["sweep_best"]).parent / "summary.csv").read_text().splitlines()
    assert len(rows) == 3 and "optuna search" in (pathlib.Path(p["sweep_best"]).parent / "summary.md").read_text()
    assert os.path.exists(p["reid_model"])
    mlflow.set_tracking_uri(corpus["mlflow"])
    (run,) = mlflow.search_runs(experiment_names=["comic-reid"], filter_string="attributes.run_name = 'pipe-finetune'",
                                output_format="list")
    for key in ("pos_margin", "neg_margin", "lr"):  # the final model was trained with the winning values
        assert float(run.data.params[key]) == pytest.approx(best[key]), key
    assert run.data.params["val_every"] == "3"  # the pipeline's own flags override the sweep's file


def _is_tune_or_train_deprecation(warning: warnings.WarningMessage) -> bool:
    """A Ray deprecation (any RayDeprecationWarning), or a deprecation raised in Ray Tune/Train/AIR code or in
    ours. Plain DeprecationWarnings of Ray Data's own DataContext constructor (hidden by Python's default
    filters, independent of any API we call) are not ours to fix."""
    from ray.util.annotations import RayDeprecationWarning

    if issubclass(warning.category, RayDeprecationWarning):
        return True
    if not issubclass(warning.category, DeprecationWarning | PendingDeprecationWarning | FutureWarning):
        return False
    origin = str(warning.filename)
    return any(part in origin for part in ("/ray/tune/", "/ray/train/", "/ray/air/", str(REPO / "reid"),
                                           str(REPO / "tune")))


@pytest.mark.ray
@pytest.mark.slow
def test_no_ray_deprecation_warnings(ray_env, pretrain_sweep, finetune_sweep):
    """The sweeps use no deprecated Ray API: no such Python warning in the driver, no deprecation in Ray's
    log records there, nor in the output of any worker process (trials, Train controllers and workers, Ray
    Data), apart from the known ones listed above."""
    caught = pretrain_sweep["warnings"] + finetune_sweep["warnings"]
    messages = [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught
                if _is_tune_or_train_deprecation(w)]
    messages += [m for m in ray_env["records"].messages if "deprecat" in m.lower()]
    for path in _worker_logs(ray_env["session_dir"]):  # only what was written since the sweeps began
        with open(path, errors="ignore") as log:
            log.seek(ray_env["log_offsets"].get(path, 0))
            messages += [line for line in log.read().splitlines() if "deprecat" in line.lower()]
    unknown = [m for m in messages if not any(k in m for k in KNOWN_DEPRECATIONS)]
    assert unknown == []
