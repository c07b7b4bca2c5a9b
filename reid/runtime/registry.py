"""Models in MLflow: log a trained model as an MLflow model and register it; resolve ``models:/`` and ``runs:/``
URIs back to a checkpoint file; the embedding ``pyfunc`` that any MLflow user can load.

What a fine-tuning run logs (``reid_model``, registered as ``--register-as``, default ``comic-reid``):

- the ``pytorch`` flavour: the Re-ID net exported with ``torch.export`` (MLflow's ``pt2`` format), with a
  signature (face/body float tensors and their masks → L2-normalised embeddings) and an input example;
- ``extra_files/model.pt``: our checkpoint (architecture, weights, recorded transform and the calibrated
  thresholds), which ``jobs/label.py --model models:/comic-reid/3`` reads.

Its metrics (the published model's validation and test figures) are linked to the logged model (MLflow 3's model
id), and a new registered version takes the alias ``champion`` only when its validation MAP@R beats the current
champion's (:func:`promote_champion`): ``models:/comic-reid@champion`` is the best model registered so far.

and ``embedder``: a ``mlflow.pyfunc`` model whose ``predict`` takes a DataFrame with ``face`` and ``body``
columns of encoded image bytes (either may be missing in a row) and returns one embedding per row, decoded and
preprocessed exactly as the labeling job does (:mod:`reid.core.embedding`). It carries the ``reid`` package as code,
so ``mlflow.pyfunc.load_model(uri).predict(frame)`` needs no checkout of this repository.

Logging never fails a job: when MLflow is down the checkpoint stays where the job wrote it and a warning says so.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Any

import mlflow.pyfunc
import numpy as np

from reid.core import config
from reid.core.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

MODEL_URI_SCHEMES = config.MLFLOW_URI_PREFIXES
REID_MODEL, SSL_MODEL, EMBEDDER = "reid_model", "ssl_model", "embedder"
CHECKPOINT_NAME = "model.pt"


def is_model_uri(path: str | None) -> bool:
    """``models:/NAME/VERSION``, ``models:/NAME@ALIAS`` or ``runs:/RUN_ID/PATH``."""
    return bool(path) and str(path).startswith(MODEL_URI_SCHEMES)


def _pip_requirements() -> list[str]:
    import torch
    import torchvision

    return [f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={torchvision.__version__.split('+')[0]}",
            "numpy", "pandas", "pillow", "pyarrow"]


def resolve_model_uri(uri: str, tracking_uri: str, dst_dir: str) -> tuple[str, dict[str, str]]:
    """Download the checkpoint behind ``uri`` into ``dst_dir`` (a folder every Ray worker can read: the job's
    output or storage folder). Returns (path of the checkpoint file there, provenance: the URI, the registered
    model name and version, the run that logged it). A plain path is returned as it is."""
    if not is_model_uri(uri):
        return uri, {}
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    provenance = {"model_uri": uri}
    try:
        if uri.startswith("models:/"):
            rest = uri[len("models:/"):]
            if "@" in rest:
                name, alias = rest.split("@", 1)
                version = client.get_model_version_by_alias(name, alias)
            elif rest.count("/") == 1:
                name, number = rest.split("/")
                version = client.get_model_version(name, number)
            else:
                raise ConfigError(f"{uri}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
            provenance.update(registered_model=name, model_version=str(version.version),
                              model_run_id=version.run_id or "")
            # where the version's files are, asked of this store: MLflow resolves a models:/ URI itself against
            # the process's default registry, not the tracking URI it is given
            source = client.get_model_version_download_uri(name, str(version.version))
        else:
            source = uri
            provenance["model_run_id"] = uri[len("runs:/"):].split("/", 1)[0]
        local = download_artifacts(artifact_uri=source, dst_path=dst_dir, tracking_uri=tracking_uri)
    except MlflowException as exc:
        raise CheckpointError(f"{uri}: not found in MLflow at {tracking_uri} ({str(exc).splitlines()[0][:300]})"
                              ) from None
    for candidate in (local, os.path.join(local, "extra_files", CHECKPOINT_NAME),
                      os.path.join(local, CHECKPOINT_NAME)):
        if os.path.isfile(candidate):
            log.info("model %s → %s", uri, candidate)
            return candidate, provenance
    raise CheckpointError(f"{uri}: the MLflow artifact holds no {CHECKPOINT_NAME} (downloaded to {local})")


def _example(model: Any) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    import torch

    cfg = model.config
    rng = np.random.default_rng(0)
    example = (rng.random((2, 3, cfg.face_size, cfg.face_size), dtype=np.float32),
               rng.random((2, 3, cfg.body_size, cfg.body_size), dtype=np.float32),
               np.array([True, False]), np.array([True, True]))
    with torch.no_grad():
        output = model.eval()(*(torch.from_numpy(x) for x in example))
    return example, output.float().numpy()


def log_reid_model(tracker: Any, model: Any, checkpoint: str, register_as: str | None) -> dict[str, str]:
    """Log a Re-ID model (pytorch flavour + our checkpoint) and the embedding pyfunc into the tracker's run;
    register the pytorch model as ``register_as`` (None or empty: not registered). Returns the URIs and the
    registered version; {} when MLflow is unavailable (a warning says so)."""
    return _log(tracker, lambda: _log_reid(tracker, model, checkpoint, register_as), checkpoint)


def log_ssl_model(tracker: Any, model: Any, checkpoint: str) -> dict[str, str]:
    """Log an SSL (pretraining) model: our checkpoint as an MLflow model artifact (``runs:/ID/ssl_model``), the
    input of ``jobs/finetune.py --ssl-checkpoint``."""
    return _log(tracker, lambda: _log_ssl(tracker, checkpoint), checkpoint)


def _log(tracker: Any, fn: Any, checkpoint: str) -> dict[str, str]:
    if not tracker.run_id:
        log.warning("MLflow unavailable: the model was not logged; it is at %s", checkpoint)
        return {}
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - MLflow must never fail the job that trained the model
        log.warning("the model could not be logged to MLflow (%s: %s); it is at %s", type(exc).__name__,
                    str(exc).splitlines()[0][:300] if str(exc) else "", checkpoint)
        return {}


def _active_run(tracker: Any):
    import mlflow

    mlflow.set_tracking_uri(tracker.uri)
    return mlflow.start_run(run_id=tracker.run_id)


def _log_reid(tracker: Any, model: Any, checkpoint: str, register_as: str | None) -> dict[str, str]:
    import mlflow
    from mlflow.models import infer_signature

    example, output = _example(model)
    names = ("face", "body", "face_mask", "body_mask")
    signature = infer_signature(dict(zip(names, example, strict=True)), output)
    with _active_run(tracker):
        info = mlflow.pytorch.log_model(model, name=REID_MODEL, signature=signature, input_example=example,
                                        serialization_format="pt2", extra_files=[checkpoint],
                                        pip_requirements=_pip_requirements(),
                                        registered_model_name=register_as or None)
        embedder = log_embedder(checkpoint, model)
    out = {"reid_model_uri": f"runs:/{tracker.run_id}/{REID_MODEL}", "embedder_uri": embedder,
           "model_id": info.model_id}
    if register_as:
        version = info.registered_model_version
        out.update(registered_model=register_as, model_version=str(version),
                   registered_model_uri=f"models:/{register_as}/{version}")
    tracker.set_tags({f"reid.{k}": v for k, v in out.items()})
    log.info("MLflow: logged the Re-ID model%s", f" as {out['registered_model_uri']}" if register_as else "")
    return out


def _log_ssl(tracker: Any, checkpoint: str) -> dict[str, str]:
    import mlflow

    with _active_run(tracker):
        mlflow.log_artifact(checkpoint, SSL_MODEL)
    out = {"ssl_model_uri": f"runs:/{tracker.run_id}/{SSL_MODEL}/{CHECKPOINT_NAME}"}
    tracker.set_tags({f"reid.{k}": v for k, v in out.items()})
    return out


CHAMPION = "champion"
FIGURE_TAG = "reid.validation_map_at_r"  # a version's validation MAP@R, as the champion decision compared it


def promote_champion(tracker: Any, name: str, version: str, figure: float, alias: str = CHAMPION
                     ) -> dict[str, str]:
    """Move ``alias`` of the registered model ``name`` to ``version`` when its validation figure (``figure``, the
    fine-tuning's validation MAP@R of the published model) beats the current holder's, or nothing holds the alias.
    A holder whose figure is not recorded (an alias set by hand) is kept; so is everything when ``figure`` is not
    a number. Records the figure on the version (tag ``reid.validation_map_at_r``) and the decision on the run
    (tags ``reid.champion_decision``: promoted | kept, ``reid.champion_reason``). Returns those two and the
    champion's version; {} when MLflow is unavailable (a warning says so; the alias is left as it was)."""
    try:
        return _promote(tracker, name, str(version), figure, alias)
    except Exception as exc:  # noqa: BLE001 - the model is registered; only the alias decision is missing
        log.warning("MLflow: no %s decision for %s version %s (%s: %s); the alias is left as it was", alias, name,
                    version, type(exc).__name__, str(exc).splitlines()[0][:300] if str(exc) else "")
        return {}


def _promote(tracker: Any, name: str, version: str, figure: float, alias: str) -> dict[str, str]:
    import math

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracker.uri)
    if math.isfinite(figure):
        client.set_model_version_tag(name, version, FIGURE_TAG, repr(float(figure)))
    holder = client.get_registered_model(name).aliases.get(alias)
    holder = None if holder is None else str(holder)
    held = client.get_model_version(name, holder).tags.get(FIGURE_TAG) if holder else None
    ours = f"version {version} (validation MAP@R {figure:.4f})"
    if not math.isfinite(figure):
        decision, reason = "kept", f"version {version} has no validation MAP@R"
    elif holder is None:
        decision, reason = "promoted", f"{ours}: no {alias} yet"
    elif holder == version:
        decision, reason = "kept", f"version {version} already is {alias}"
    elif held is None:
        decision, reason = "kept", f"{alias} version {holder} has no recorded validation MAP@R (set by hand?)"
    elif figure > float(held):
        decision, reason = "promoted", f"{ours} beats {alias} version {holder} ({float(held):.4f})"
    else:
        decision, reason = "kept", f"{ours} does not beat {alias} version {holder} ({float(held):.4f})"
    if decision == "promoted":
        client.set_registered_model_alias(name, alias, version)
    out = {"champion_decision": decision, "champion_reason": reason,
           "champion_version": version if decision == "promoted" else (holder or "")}
    tracker.set_tags({f"reid.{k}": v for k, v in out.items()})
    log.info("MLflow: %s %s: %s", alias, decision, reason)
    return out


class Embedder(mlflow.pyfunc.PythonModel):
    """The ``mlflow.pyfunc`` model: a DataFrame of ``face`` / ``body`` encoded image bytes → embeddings."""

    def load_context(self, context: Any) -> None:
        from reid.core.embedding import CharacterEmbedder
        from reid.core.models.checkpoint import load_model_checkpoint

        model, _, _ = load_model_checkpoint(context.artifacts["checkpoint"], expected_kind="reid")
        self.embedder = CharacterEmbedder(model, "cpu", batch_size=64)

    def predict(self, context, model_input, params=None):  # noqa: ANN001 - no hints: MLflow would infer from them
        from reid.core.embedding import decode_rgb

        def images(column: str) -> list:
            values = model_input[column] if column in model_input else [None] * len(model_input)
            return [decode_rgb(bytes(v)) if isinstance(v, bytes | bytearray) and v else None for v in values]

        faces, bodies = images("face"), images("body")
        missing = [i for i, (f, b) in enumerate(zip(faces, bodies, strict=True)) if f is None and b is None]
        if missing:
            raise ValueError(f"rows {missing[:10]} have neither a face nor a body image")
        return self.embedder(faces, bodies)


def log_embedder(checkpoint: str, model: Any) -> str:
    """Log the :class:`Embedder` pyfunc into the active run; returns its ``runs:/`` URI."""
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    signature = ModelSignature(
        inputs=Schema([ColSpec("binary", "face", required=False), ColSpec("binary", "body", required=False)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, model.config.embed_dim))]))
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # reid/, above runtime/
    staging = tempfile.mkdtemp(prefix="reid_embedder_")
    try:  # the reid package travels with the model, without byte-code caches
        shutil.copytree(package, os.path.join(staging, "reid"), ignore=shutil.ignore_patterns("__pycache__"))
        mlflow.pyfunc.log_model(name=EMBEDDER, python_model=Embedder(), artifacts={"checkpoint": checkpoint},
                                code_paths=[os.path.join(staging, "reid")], signature=signature,
                                pip_requirements=_pip_requirements())
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return f"runs:/{mlflow.active_run().info.run_id}/{EMBEDDER}"
