"""Helpers of the end-to-end cluster tests: submit jobs to a :class:`LocalCluster` (Ray's
``JobSubmissionClient``), find where Ray put things, poll until something happens. Test code only:
``from helpers import e2e`` (pytest puts ``tests/`` on ``sys.path``)."""

from __future__ import annotations

import shlex
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from ray.job_submission import JobStatus

from reid.runtime.localcluster import LocalCluster, LocalClusterError, worker_resource

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def log_in_to_mlflow(cluster: LocalCluster, env: pytest.MonkeyPatch) -> None:
    """This process's MLflow clients log in to the cluster's server with the credentials its jobs get."""
    for name, value in cluster.client_env().items():
        if name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            env.setenv(name, value)


def submit_in_background(cluster: LocalCluster, submission_id: str, argv: list[str],
                         working_dir: Path = REPO, python: str = sys.executable) -> str:
    """Submit ``python <argv>`` with ``working_dir`` uploaded as the job's working dir; returns at once."""
    return cluster.job_client().submit_job(entrypoint=shlex.join([python, *argv]), submission_id=submission_id,
                                           runtime_env={"working_dir": str(working_dir)})


def wait_job(cluster: LocalCluster, submission_id: str, timeout_s: float = 600) -> JobStatus:
    """Poll until the job ends; its final status. On timeout the job is stopped and TimeoutError raised."""
    client = cluster.job_client()
    try:
        return wait_for(lambda: (status := client.get_job_status(submission_id)).is_terminal() and status,
                        timeout_s, f"job {submission_id} to end", period_s=0.5)
    except TimeoutError:
        stop_job(cluster, submission_id)
        raise


def submit(cluster: LocalCluster, submission_id: str, argv: list[str], timeout_s: float = 600,
           working_dir: Path = REPO, python: str = sys.executable) -> tuple[JobStatus, str]:
    """Submit and wait: (final status, the job's log)."""
    submit_in_background(cluster, submission_id, argv, working_dir, python)
    status = wait_job(cluster, submission_id, timeout_s)
    return status, job_logs(cluster, submission_id)


def job_logs(cluster: LocalCluster, submission_id: str) -> str:
    """Everything the job's driver printed so far."""
    return cluster.job_client().get_job_logs(submission_id)


def stop_job(cluster: LocalCluster, submission_id: str) -> bool:
    """What `ray job stop` does (the driver gets SIGTERM, SIGKILL 3 s later); returns whether the job was
    running."""
    return cluster.job_client().stop_job(submission_id)


def wait_for(condition: Callable[[], T], timeout_s: float, what: str, period_s: float = 0.25) -> T:
    """Poll `condition` until it returns something truthy (returned); raise naming `what` on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(period_s)
    raise TimeoutError(f"waited {timeout_s:.0f} s for {what}")


def jobs(cluster: LocalCluster) -> dict[str, JobStatus]:
    """Submission id -> status of every job the cluster's job server knows."""
    return {job.submission_id: job.status for job in cluster.job_client().list_jobs() if job.submission_id}


def job_id(cluster: LocalCluster, submission_id: str) -> str:
    """The Ray job id (hex) of a submitted job."""
    return str(cluster.job_client().get_job_info(submission_id).job_id)


def actors(cluster: LocalCluster, class_name: str, state: str = "ALIVE") -> list[dict[str, Any]]:
    """Actors of `class_name` in `state` (state API over the dashboard): dicts with node_id, pid, ..."""
    query = urllib.parse.urlencode({"limit": 10000, "filter_keys": "class_name", "filter_predicates": "=",
                                    "filter_values": class_name})
    listed = cluster._dashboard_get(f"/api/v0/actors?{query}")["data"]["result"]["result"]
    return [a for a in listed if a["state"] == state]


def alive_actors_of_job(cluster: LocalCluster, submission_id: str) -> list[dict[str, Any]]:
    """Non-detached actors of a submitted job that are not dead yet (they die some time after the driver;
    detached ones, such as Ray Data's stats actor, outlive every job)."""
    query = urllib.parse.urlencode({"limit": 10000, "filter_keys": "job_id", "filter_predicates": "=",
                                    "filter_values": job_id(cluster, submission_id), "detail": "true"})
    listed = cluster._dashboard_get(f"/api/v0/actors?{query}")["data"]["result"]["result"]
    return [a for a in listed if a["state"] != "DEAD" and not a["is_detached"]]


def worker_index_of_node(cluster: LocalCluster, node_id: str) -> int | None:
    """Which worker node (index i of `worker-<i>`) `node_id` is; None for the head."""
    for node in cluster.nodes():
        if node["node_id"] == node_id:
            resources = node["resources_total"]
            return next((i for i in range(cluster.config.num_workers) if worker_resource(i) in resources), None)
    raise LocalClusterError(f"node {node_id} is not in cluster {cluster.cluster_id}")
