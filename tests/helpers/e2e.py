"""Helpers of the end-to-end cluster tests: submit jobs to a :class:`LocalCluster`, find where Ray put
things, poll until something happens. Test code only: ``from helpers import e2e`` (pytest puts ``tests/`` on
``sys.path``)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

from reid.localcluster import LocalCluster, LocalClusterError, worker_resource

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def submit_command(cluster: LocalCluster, submission_id: str, argv: list[str]) -> list[str]:
    """`ray job submit` of `python <argv>` with this repo as the working dir, to `cluster`'s job server."""
    ray_bin = str(Path(sys.executable).parent / "ray")
    return [ray_bin, "job", "submit", "--address", cluster.dashboard_url, "--working-dir", str(REPO),
            "--submission-id", submission_id, "--", sys.executable, *argv]


def submit(cluster: LocalCluster, submission_id: str, argv: list[str],
           timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    """Submit and wait; returns the finished `ray job submit` (its stdout holds the job's log)."""
    return subprocess.run(submit_command(cluster, submission_id, argv), env=cluster.subprocess_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=timeout_s, check=False)


def submit_in_background(cluster: LocalCluster, submission_id: str, argv: list[str],
                         log: IO[bytes]) -> subprocess.Popen[bytes]:
    """Submit without waiting: `ray job submit` tails the job's log into `log` until the job ends."""
    return subprocess.Popen(submit_command(cluster, submission_id, argv), env=cluster.subprocess_env(), cwd=REPO,
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def wait_for(condition: Callable[[], T], timeout_s: float, what: str, period_s: float = 0.25) -> T:
    """Poll `condition` until it returns something truthy (returned); raise naming `what` on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(period_s)
    raise TimeoutError(f"waited {timeout_s:.0f} s for {what}")


def stop_job(cluster: LocalCluster, submission_id: str) -> bool:
    """What `ray job stop` does (the driver gets SIGTERM, SIGKILL 3 s later), over HTTP so that it takes
    milliseconds instead of a CLI start-up; returns whether the job was running."""
    request = urllib.request.Request(
        f"{cluster.dashboard_url}/api/jobs/{urllib.parse.quote(submission_id)}/stop", method="POST",
        headers={"Authorization": f"Bearer {cluster.token_path.read_text().strip()}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return bool(json.load(response)["stopped"])


def jobs(cluster: LocalCluster) -> dict[str, str]:
    """Submission id -> status of every job the cluster's job server knows."""
    return {job["submission_id"]: job["status"] for job in cluster._dashboard_get("/api/jobs/")
            if job.get("submission_id")}


def actors(cluster: LocalCluster, class_name: str, state: str = "ALIVE") -> list[dict[str, Any]]:
    """Actors of `class_name` in `state` (state API over the dashboard): dicts with node_id, pid, ..."""
    query = urllib.parse.urlencode({"limit": 10000, "filter_keys": "class_name", "filter_predicates": "=",
                                    "filter_values": class_name})
    listed = cluster._dashboard_get(f"/api/v0/actors?{query}")["data"]["result"]["result"]
    return [a for a in listed if a["state"] == state]


def job_id(cluster: LocalCluster, submission_id: str) -> str:
    """The Ray job id (hex) of a submitted job."""
    return str(cluster._dashboard_get(f"/api/jobs/{urllib.parse.quote(submission_id)}")["job_id"])


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
