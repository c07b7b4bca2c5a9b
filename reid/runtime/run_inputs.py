"""The datasets a run read, as MLflow datasets with digests (``mlflow.data``): a crop output and labelled sequence
files. :meth:`reid.runtime.tracking.Tracker.log_inputs` logs them as the run's inputs, each with its context (training,
validation, testing, labeling), so that the MLflow UI says which crops and which sequences a model saw and a
label run labelled, and runs that read the same data show the same dataset (same name and digest).

Each function returns MLflow's ``Dataset`` entity as a plain dict (what the tracker spools while MLflow is down),
or None, with a warning, when the data cannot be described: describing an input never stops a job.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

DIGEST_CHARS = 32  # MLflow stores a dataset digest in at most 36 characters


def _dataset(frame: Any, source: str, name: str, digest: str) -> dict[str, str]:
    """An MLflow dataset (``mlflow.data.from_pandas``) as the plain dict MLflow's ``Dataset`` entity takes: name,
    digest, source, source type, schema and profile (the row count)."""
    import warnings

    import mlflow.data

    with warnings.catch_warnings():  # MLflow registers its local source twice and warns about the ambiguity
        warnings.simplefilter("ignore")
        return mlflow.data.from_pandas(frame, source=source, name=name, digest=digest).to_dict()


def _described(what: str, build: Callable[[], dict[str, str]]) -> dict[str, str] | None:
    try:
        return build()
    except Exception as exc:  # noqa: BLE001 - a dataset description is never a reason to stop a job
        log.warning("could not describe %s as an MLflow dataset (%s: %s); the run will not list it as an input",
                    what, type(exc).__name__, str(exc)[:200])
        return None


def crops_dataset(crops_root: str, fingerprint: dict[str, Any] | None = None) -> dict[str, str] | None:
    """A crop output as an MLflow dataset: one row per committed shard (its manifest entry: rows, error rows, the
    checksum of its ids), named ``crops``. Its digest is :func:`reid.core.contracts.crops.crops_fingerprint`'s, so the
    same crops have the same digest in every run that read them (pretraining, fine-tuning, labeling), and
    re-cropped ones another (``fingerprint``: that value, when the job computed it already)."""
    def build() -> dict[str, str]:
        import pandas as pd

        from reid.core.contracts.crops import crops_fingerprint, crops_output

        shards = [s.to_dict() for _, s in sorted(crops_output(crops_root).committed().items())]
        frame = pd.DataFrame(shards, columns=["shard", "input_rows", "rows", "error_rows", "checksum"])
        digest = (fingerprint or crops_fingerprint(crops_root))["sha256"][:DIGEST_CHARS]
        return _dataset(frame, crops_root, "crops", digest)

    return _described(f"the crops {crops_root}", build)


def sequences_dataset(path: str) -> dict[str, str] | None:
    """A labelled sequences file (``<split>_sequences.json``) as an MLflow dataset: one row per readable
    sequence (id, series, panels, characters, instances), named after the file; its digest is the file's
    sha256."""
    def build() -> dict[str, str]:
        import pandas as pd

        from reid.core import io
        from reid.core.data import formats

        sequences = formats.read_sequences(path, bad=[])
        frame = pd.DataFrame([{"seq_id": s.seq_id, "series": s.series_id, "panels": len(s.panels),
                               "characters": len(s.characters),
                               "instances": sum(len(c.instances) for c in s.characters)} for s in sequences],
                             columns=["seq_id", "series", "panels", "characters", "instances"])
        name = os.path.basename(path).removesuffix(".json")
        return _dataset(frame, path, name, io.fingerprint(path)["sha256"][:DIGEST_CHARS])

    return _described(f"the sequences {path}", build)
