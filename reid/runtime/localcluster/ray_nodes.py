"""The Ray side of a local cluster: a head and N worker nodes, each its own `ray start`, and token auth.

Network. The dashboard/job server binds 127.0.0.1. On Linux Ray rewrites `--node-ip-address=127.0.0.1`
to the machine's routable address and its GCS and raylets listen on all interfaces (cluster/README.md), so
the cluster runs with token authentication and its own token file (`RAY_AUTH_MODE=token`,
`RAY_AUTH_TOKEN_PATH=<state dir>/auth_token`); `~/.ray` is never read or written.
"""

from __future__ import annotations

import json
import os
import secrets
import string
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reid.runtime.localcluster.config import LocalClusterConfig
from reid.runtime.localcluster.processes import (
    TAG_ENV,
    LocalClusterError,
    _launch,
    _log_tail,
    _venv_tool,
    _write_atomic,
)
from reid.runtime.raycluster import OOM_RETRIES_ENV, UNIT_RETRIES, job_client, worker_soft_limit

if TYPE_CHECKING:
    from ray.job_submission import JobStatus, JobSubmissionClient

TOKEN_FILE = "auth_token"
RAY_REGISTRATION_TIMEOUT = "timed out during startup"
"""What `ray start` prints when its raylet has not registered with the GCS within Ray's fixed 30 s (not
configurable, `ray/_private/node.py`). It raises after starting every process of the node and stops none of
them: on a loaded machine the raylet registers later."""
# <temp dir>/session_<date>_<pid>/sockets/plasma_store must fit a 107-byte Unix socket path.
_MAX_RAY_TEMP_DIR_LEN = 40


class NodesNotAlive(LocalClusterError):
    """The cluster's nodes did not all become ALIVE in time: a loaded machine as often as a broken node."""


def _ray_config_env(**settings: int | None) -> dict[str, str]:
    """Ray reads any of its system settings from `RAY_<name>` in the environment of its processes."""
    return {f"RAY_{name}": str(value) for name, value in settings.items() if value is not None}


def worker_resource(index: int) -> str:
    """Custom resource that only worker node `index` offers: worker_a, worker_b, ..."""
    return f"worker_{string.ascii_lowercase[index]}"


class RayNodes:
    """The head and `config.num_workers` worker nodes of cluster `cluster_id`: their `ray start` command
    lines and environment, launching and waiting for them, the cluster's token, its job client (Ray's
    `JobSubmissionClient`) and the dashboard's state API.

    It starts nothing by itself and records nothing: `LocalCluster` drives it and keeps the sessions.
    """

    def __init__(self, config: LocalClusterConfig, state_dir: Path, cluster_id: str) -> None:
        self.config = config
        self.state_dir = state_dir
        self.cluster_id = cluster_id
        self._log_offsets: dict[str, int] = {}

    # -- addresses, token and environment

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.config.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        """Dashboard and job server (`ray job submit --address`)."""
        return f"http://127.0.0.1:{self.config.dashboard_port}"

    @property
    def token_path(self) -> Path:
        return self.state_dir / TOKEN_FILE

    @property
    def ray_temp_root(self) -> Path:
        """Parent of the nodes' `--temp-dir`s: inside the state dir unless that path is too long for sockets."""
        inside = self.state_dir / "ray"
        if len(str(inside / "worker-9")) <= _MAX_RAY_TEMP_DIR_LEN:
            return inside
        return Path("/tmp") / f"reid-{self.cluster_id}"

    def node_names(self) -> list[str]:
        return ["head"] + [f"worker-{i}" for i in range(self.config.num_workers)]

    def log_path(self, role: str) -> Path:
        return self.state_dir / "logs" / f"{role}.log"

    def write_token(self) -> None:
        """A fresh random token for this cluster, readable by its owner only."""
        _write_atomic(self.token_path, secrets.token_hex(32), mode=0o600)

    def client_env(self) -> dict[str, str]:
        """What a Ray client (ray job submit, the state API) needs: the job server and the token."""
        return {
            "RAY_ADDRESS": self.dashboard_url,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token_path),
        }

    def node_env(self, role: str, base: dict[str, str]) -> dict[str, str]:
        """Environment of `role`'s `ray start`: `base` (a client's environment) tagged with the role."""
        env = dict(base)
        del env["RAY_ADDRESS"]  # `ray start --head` must not try to join another cluster
        env.update(
            {
                TAG_ENV: f"{self.cluster_id}/{role}",
                "RAY_USAGE_STATS_ENABLED": "0",
                **_ray_config_env(
                    health_check_period_ms=self.config.health_check_period_ms,
                    health_check_failure_threshold=self.config.health_check_failure_threshold,
                    task_oom_retries=int(os.environ.get(OOM_RETRIES_ENV, UNIT_RETRIES)),  # not for ever
                    num_workers_soft_limit=worker_soft_limit(),  # idle workers reused, not restarted per task
                ),
                # Job entrypoints run `python ...` from the raylet's PATH: make it this venv's.
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            }
        )
        return env

    # -- commands

    def _common_flags(self, role: str, num_cpus: int) -> list[str]:
        return [
            "--node-ip-address=127.0.0.1",
            "--temp-dir", str(self.ray_temp_root / role),
            "--num-cpus", str(num_cpus),
            "--object-store-memory", str(self.config.object_store_mb * 1024 * 1024),
            # Several raylets on one machine: let the OS pick agent and worker ports.
            "--dashboard-agent-listen-port", "0",
            "--min-worker-port", "0", "--max-worker-port", "0",
            "--disable-usage-stats",
        ]  # fmt: skip

    def head_command(self) -> list[str]:
        return [
            _venv_tool("ray"), "start", "--head",
            "--port", str(self.config.gcs_port),
            "--dashboard-host", "127.0.0.1",
            "--dashboard-port", str(self.config.dashboard_port),
            "--ray-client-server-port", str(self.config.client_server_port),
            *self._common_flags("head", self.config.head_num_cpus),
        ]  # fmt: skip

    def worker_command(self, index: int) -> list[str]:
        return [
            _venv_tool("ray"), "start",
            "--address", self.gcs_address,
            "--resources", json.dumps({worker_resource(index): 1}),
            *self._common_flags(f"worker-{index}", self.config.worker_num_cpus),
        ]  # fmt: skip

    # -- launching

    def launch(self, role: str, command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Start `role`'s `ray start` in a session of its own, logging to `logs/<role>.log`."""
        log = self.log_path(role)
        self._log_offsets[role] = log.stat().st_size if log.exists() else 0  # the log is appended to
        return _launch(command, env, log)

    def wait_ray_start(self, role: str, launcher: subprocess.Popen[bytes]) -> bool:
        """Wait for a `ray start` to return. True when it returned 0; False when it gave up only on its raylet's
        registration (`RAY_REGISTRATION_TIMEOUT`): the node's processes were all started and keep running, so
        whether the node joins is left to `wait_for_nodes`. Raises with the log on any other failure."""
        log = self.log_path(role)
        try:
            code = launcher.wait(timeout=self.config.startup_timeout_s)
        except subprocess.TimeoutExpired:
            launcher.kill()
            launcher.wait()
            raise LocalClusterError(
                f"`ray start` for {role} did not return; log {log}:\n{_log_tail(log)}"
            ) from None
        if code == 0:
            return True
        with open(log, "rb") as f:  # what this launch wrote, not an earlier attempt's lines
            f.seek(self._log_offsets.get(role, 0))
            if RAY_REGISTRATION_TIMEOUT in f.read().decode(errors="replace"):
                return False
        raise LocalClusterError(f"`ray start` for {role} exited with {code}; log {log}:\n{_log_tail(log)}")

    # -- the job server and the dashboard's API, with the token

    def auth_headers(self) -> dict[str, str]:
        """The HTTP header every request to the dashboard and job server needs."""
        return {"Authorization": f"Bearer {self.token_path.read_text().strip()}"}

    def job_client(self) -> JobSubmissionClient:
        """A Ray job client of this cluster's job server, with its token (not another Ray the environment
        names: :func:`reid.runtime.raycluster.job_client`)."""
        return job_client(self.dashboard_url, headers=self.auth_headers())

    def job_status(self, submission_id: str) -> JobStatus:
        """Status of a submitted job as the job server reports it: PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED."""
        return self.job_client().get_job_status(submission_id)

    def dashboard_get(self, path: str) -> Any:
        # Plain HTTP for the state API: ray.util.state's functions take no auth header (they read one token
        # per process from its environment), and a test process talks to clusters of different tokens.
        request = urllib.request.Request(f"{self.dashboard_url}{path}", headers=self.auth_headers())
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def nodes(self) -> list[dict[str, object]]:
        """Nodes as the GCS sees them (state API over the dashboard, with the token)."""
        return list(self.dashboard_get("/api/v0/nodes?limit=1000")["data"]["result"]["result"])

    def wait_for_nodes(self, alive: int, timeout_s: float | None = None) -> list[dict[str, object]]:
        """Poll until exactly `alive` nodes are ALIVE; returns the node list."""
        deadline = time.monotonic() + (timeout_s or self.config.startup_timeout_s)
        last: object = None
        while time.monotonic() < deadline:
            try:
                nodes = self.nodes()
                if sum(node["state"] == "ALIVE" for node in nodes) == alive:
                    return nodes
                last = [(n["node_id"], n["state"]) for n in nodes]
            except (urllib.error.URLError, OSError, KeyError, ValueError) as error:
                last = error
            time.sleep(0.5)
        raise NodesNotAlive(f"cluster {self.cluster_id}: expected {alive} alive nodes; last seen: {last}")
