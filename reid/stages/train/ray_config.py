"""The Ray Train configuration of a training run: where it is stored, how it scales, how it fails, its data."""

from __future__ import annotations

import os

from reid.core import io
from reid.core.errors import ConfigError


def trainer_run_config(name: str, storage_path: str, max_failures: int):
    """The run's ``RunConfig``: named ``name`` under ``storage_path`` (same name = resume), the last two
    checkpoints kept, lost workers retried ``max_failures`` times, our own errors never."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    from reid.stages.train.failures import StopOnNonRetryable

    return RunConfig(name=name, storage_path=os.path.abspath(storage_path) if not io.is_uri(storage_path)
                     else storage_path,
                     failure_config=FailureConfig(max_failures=max_failures),  # lost workers and nodes only:
                     callbacks=[StopOnNonRetryable()],  # our own errors (ReidError) are never retried
                     checkpoint_config=CheckpointConfig(num_to_keep=2))


def scaling_config(workers: int, gpu: bool, cpus_per_worker: float):
    """``workers`` training workers of ``cpus_per_worker`` CPUs each, and one GPU each with ``gpu``."""
    from ray.train import ScalingConfig

    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    resources = {"CPU": cpus_per_worker}
    if gpu:
        resources["GPU"] = 1
    return ScalingConfig(num_workers=workers, use_gpu=gpu, resources_per_worker=resources)


def run_dir(storage: str, name: str) -> str:
    """``<storage>/<name>``, absolute for a local path: every worker, on any node, must see the same folder."""
    return io.join(storage if io.is_uri(storage) else os.path.abspath(storage), name)


def spool_dir(storage: str, name: str) -> str | None:
    """Where a run's unlogged MLflow operations are saved: ``<storage>/<name>`` (absolute; on a cluster the
    shared storage, next to the checkpoints) rather than a worker's Ray session dir. None for URI storage."""
    return None if io.is_uri(storage) else io.join(os.path.abspath(storage), name)


def data_config(datasets_to_split: list[str] | str = "all"):
    """Ray Train's DataConfig with explicit execution options (the default one triggers a Ray deprecation)."""
    import ray
    from ray.data import ExecutionOptions
    from ray.train import DataConfig

    current = ray.data.DataContext.get_current().execution_options
    options = ExecutionOptions(resource_limits=current.resource_limits, preserve_order=current.preserve_order,
                               verbose_progress=current.verbose_progress)
    return DataConfig(datasets_to_split=datasets_to_split, execution_options=options)
