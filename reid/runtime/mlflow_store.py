"""Where a job's MLflow runs live: the tracking URI a job uses when none is given, a client that fails fast,
the artifact folder of a local store, and how to open a run in the UI. :mod:`reid.runtime.tracking` builds its
resilient :class:`~reid.runtime.tracking.Tracker` on these."""

from __future__ import annotations

import os


def default_tracking_uri(uri: str | None = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else a SQLite store at ``./runs/mlflow.db``."""
    if uri:
        return uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    path = os.path.abspath(os.path.join("runs", "mlflow.db"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return f"sqlite:///{path}"


def make_client(uri: str):
    # Fail fast instead of MLflow's default minutes of HTTP retries: we retry ourselves, without blocking.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    from mlflow.tracking import MlflowClient

    from reid.core import console

    console.quiet_libraries()  # MLflow's own stderr handler: its lines go to the job's log file
    return MlflowClient(tracking_uri=uri)


# MLflow 3's UI opens an experiment in its GenAI view unless this tag says it holds model-training runs
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


def local_artifact_location(uri: str) -> str | None:
    """For a local SQLite store (``sqlite:////abs/run/mlflow.db``): ``<its folder>/mlartifacts``, so that a run's
    artifacts live beside its store (``runs/demo/``) and not in ``./mlruns`` of whatever directory the job ran in.
    None (the server's default) for anything else."""
    if not uri.startswith("sqlite:///"):
        return None
    db = uri[len("sqlite:///"):]
    return "file://" + os.path.join(os.path.dirname(os.path.abspath(db)), "mlartifacts")


def ui_hint(uri: str, experiment_id: str | None, run_id: str | None) -> str:
    """How to look at a run in the MLflow UI. MLflow 3.17's UI opens every experiment in its GenAI view (a
    global toggle, kept in the browser; the experiment's ``mlflow.experimentKind`` tag is not consulted while the
    toggle is on), so the link asks for the model-training view (``?workflowType=machine_learning``)."""
    page = f"#/experiments/{experiment_id}/runs/{run_id}" if experiment_id and run_id else "#/experiments"
    query = "?workflowType=machine_learning"
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/{page}{query}"
    return (f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1, then open "
            f"http://127.0.0.1:5000/{page}{query}")
