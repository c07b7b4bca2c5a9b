"""Shared fixtures: one local Ray per test session, a tiny synthetic corpus and its crops."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Ray Train's controller looks at its workers every 2 s: a run of the tiny test model is seconds long, so its start
# and its end would each wait for the next look. Every Ray this session starts (its local Ray, `ray start` nodes,
# the jobs' drivers) inherits the shorter period; the product keeps Ray's default.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance (2 CPUs) for every `ray` test; its own GCS port and RAY_ADDRESS."""
    import ray

    from reid.runtime.raycluster import init_ray

    saved = os.environ.get("RAY_ADDRESS")
    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()
    if saved is None:
        os.environ.pop("RAY_ADDRESS", None)
    else:
        os.environ["RAY_ADDRESS"] = saved


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """A tiny COMICS-format corpus (2 series) with injected faults: corrupt, missing, off-page."""
    from reid.core.data.synthetic import generate_corpus, preset_config

    out = tmp_path_factory.mktemp("corpus")
    generate_corpus(str(out), preset_config("tiny", pages=5, seed=2, corrupt_images=1, missing_images=1,
                                            offpage_partial=1, offpage_whole=1))
    return out


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


@pytest.fixture(scope="session")
def tiny_crops(ray_session, tiny_corpus, tmp_path_factory, mlflow_uri) -> Path:
    from reid.stages.crop import CropConfig, run_crop

    out = tmp_path_factory.mktemp("crops")
    run_crop(CropConfig(comics_root=str(tiny_corpus), out=str(out), pages_per_shard=2, mlflow_uri=mlflow_uri,
                        name="fixture-crop"))
    return out


@pytest.fixture()
def job_env() -> dict[str, str]:
    """Environment for running a job script in a subprocess with the project's Python."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    env["PYTHONUNBUFFERED"] = "1"
    return env


PYTHON = sys.executable


@pytest.fixture(scope="session")
def review_labels(tiny_crops, tmp_path_factory, mlflow_uri) -> dict[str, Path]:
    """A label run of the tiny crops with a random Re-ID model, embeddings stored (the review app's tests)."""
    from helpers.labeling import label_config, random_reid_model

    from reid.stages.label import run_label

    root = tmp_path_factory.mktemp("review")
    model = random_reid_model(root)
    run_label(label_config(tiny_crops, root / "labels", model, (0.5, 0.6), mlflow_uri, save_embeddings=True,
                           report_windows=0, name="review-label"))
    return {"root": root, "labels": root / "labels", "crops": tiny_crops, "model": model}


@pytest.fixture(scope="module")  # per module: no Playwright loop outlives the tests that use it
def browser():
    """Headless Chromium driven by Playwright: Debian's ``chromium`` (``make test`` installs it; Playwright's own
    browser download needs the internet)."""
    import shutil

    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.fail("chromium is not on PATH: `make test` installs it (apt-get install -y chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield launched
        launched.close()

