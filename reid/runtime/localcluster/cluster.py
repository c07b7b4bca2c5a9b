"""A local multi-node Ray cluster (a head and N worker nodes, each its own `ray start`) and an MLflow server.

Used by the `cluster` tests and by `cluster/local.sh` (cluster/README.md). Linux only. `LocalCluster`
composes the Ray nodes (`ray_nodes`), the MLflow server (`mlflow_server`) and the process bookkeeping
(`processes`: what counts as ours, how it is stopped). The state directory holds the config and the
session ids (`state.json`, `pids/<role>.pid`), the cluster's token and an env file to `source` (owner-only: it
holds MLflow's credentials).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shlex
import shutil
import signal
import subprocess
from dataclasses import asdict
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import psutil

from reid.runtime.localcluster.config import LocalClusterConfig
from reid.runtime.localcluster.mlflow_server import MlflowServer
from reid.runtime.localcluster.processes import (
    LocalClusterError,
    ProcessInfo,
    _require_free_port,
    _write_atomic,
    owned_processes,
    stop_owned,
)
from reid.runtime.localcluster.ray_nodes import TOKEN_FILE, NodesNotAlive, RayNodes

if TYPE_CHECKING:
    from ray.job_submission import JobStatus, JobSubmissionClient

log = logging.getLogger(__name__)
STATE_FILE = "state.json"
STARTUP_ATTEMPTS = 3
ENV_FILE = "env"
_CLIENT_ENV_DROP = ("RAY_AUTH_TOKEN", "RAY_ADDRESS")


class LocalCluster:
    """Head + `num_workers` Ray worker nodes started with `ray start` on this machine, plus MLflow.

    `with LocalCluster(config) as cluster:` starts and always stops it. `LocalCluster.attach(state_dir)`
    re-opens a cluster another process started (what `cluster/local.sh down` does).
    """

    def __init__(self, config: LocalClusterConfig, cluster_id: str | None = None) -> None:
        self.config = config
        self.state_dir = Path(config.state_dir).resolve()
        self.cluster_id = cluster_id or f"rc-{secrets.token_hex(4)}"
        self.session_ids: dict[str, int] = {}  # role -> session id (= PID of the process that led it)
        self.ray_nodes = RayNodes(config, self.state_dir, self.cluster_id)
        self.mlflow: MlflowServer | None = None
        if config.with_mlflow:
            self.mlflow = MlflowServer(
                self.state_dir / "mlflow", config.mlflow_port, tag=f"{self.cluster_id}/mlflow",
                startup_timeout_s=config.startup_timeout_s,
            )  # fmt: skip

    # -- addresses and environment

    @property
    def gcs_address(self) -> str:
        return self.ray_nodes.gcs_address

    @property
    def dashboard_url(self) -> str:
        """Dashboard and job server (`ray job submit --address`)."""
        return self.ray_nodes.dashboard_url

    @property
    def mlflow_uri(self) -> str | None:
        return self.mlflow.uri if self.mlflow is not None else None

    @property
    def token_path(self) -> Path:
        return self.ray_nodes.token_path

    @property
    def ray_temp_root(self) -> Path:
        """Parent of the nodes' `--temp-dir`s: inside the state dir unless that path is too long for sockets."""
        return self.ray_nodes.ray_temp_root

    def node_names(self) -> list[str]:
        return self.ray_nodes.node_names()

    def client_env(self) -> dict[str, str]:
        """Variables a client (ray job submit, MLflow) needs; also written to `<state dir>/env`. The nodes get
        them too, so jobs and Ray workers log to MLflow as its admin."""
        env = self.ray_nodes.client_env()
        if self.mlflow is not None:
            env.update(self.mlflow.client_env())
        return env

    def subprocess_env(self) -> dict[str, str]:
        """This process's environment with `client_env()` applied: for `subprocess.run(["ray", ...])`."""
        base = {k: v for k, v in os.environ.items() if k not in _CLIENT_ENV_DROP}
        return {**base, **self.client_env()}

    def _node_env(self, role: str) -> dict[str, str]:
        return self.ray_nodes.node_env(role, self.subprocess_env())

    # -- commands

    def head_command(self) -> list[str]:
        return self.ray_nodes.head_command()

    def worker_command(self, index: int) -> list[str]:
        return self.ray_nodes.worker_command(index)

    # -- state

    def _write_state(self) -> None:
        state = {
            "cluster_id": self.cluster_id,
            "config": asdict(self.config) | {"state_dir": str(self.state_dir)},
            "ray_temp_root": str(self.ray_temp_root),
            "session_ids": self.session_ids,
        }
        _write_atomic(self.state_dir / STATE_FILE, json.dumps(state, indent=2) + "\n")
        pid_dir = self.state_dir / "pids"
        pid_dir.mkdir(exist_ok=True)
        for role, session_id in self.session_ids.items():
            _write_atomic(pid_dir / f"{role}.pid", f"{session_id}\n")

    def _write_env_file(self) -> None:
        lines = [f"# written by `cluster/local.sh up` for cluster {self.cluster_id}; `source` it"]
        lines += [f"export {key}={shlex.quote(value)}" for key, value in self.client_env().items()]
        _write_atomic(self.state_dir / ENV_FILE, "\n".join(lines) + "\n", mode=0o600)  # MLflow's password

    @classmethod
    def attach(cls, state_dir: Path | str) -> LocalCluster | None:
        """The cluster recorded in `state_dir`, or None if none was ever started there."""
        state_path = Path(state_dir).resolve() / STATE_FILE
        try:
            state = json.loads(state_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            raise LocalClusterError(f"{state_path}: unreadable cluster state ({error})") from None
        cluster = cls(LocalClusterConfig(**state["config"]), cluster_id=state["cluster_id"])
        cluster.session_ids = {role: int(session) for role, session in state["session_ids"].items()}
        return cluster

    # -- lifecycle

    def processes(self, role: str | None = None) -> list[ProcessInfo]:
        """Live processes of this cluster (all, or one role: head, worker-<i>, mlflow)."""
        if role is None:
            return owned_processes(self.cluster_id, self.session_ids.values())[0]
        session = [self.session_ids[role]] if role in self.session_ids else []
        return owned_processes(f"{self.cluster_id}/{role}", session)[0]

    def is_running(self) -> bool:
        return bool(self.processes())

    def start(self) -> LocalCluster:
        """Start MLflow, the head, then the workers; wait until all nodes are alive. Refuses if the
        state dir holds a running cluster. On any failure everything started is stopped again."""
        previous = LocalCluster.attach(self.state_dir)
        if previous is not None and previous.is_running():
            raise LocalClusterError(
                f"a local cluster ({previous.cluster_id}) is already running from {self.state_dir}; "
                "run `cluster/local.sh down` first"
            )
        if previous is not None:
            previous.stop()  # a stale record (its processes died): clear its files
        for port, what in (
            (self.config.gcs_port, "GCS"),
            (self.config.dashboard_port, "dashboard"),
            (self.config.client_server_port, "Ray client server"),
        ):
            _require_free_port(port, what)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / ENV_FILE).unlink(missing_ok=True)
        for attempt in range(1, STARTUP_ATTEMPTS + 1):
            # Record the id before launching anything, so `down` can clean up a half-started cluster.
            self._write_state()
            self.ray_nodes.write_token()
            try:
                self._start_processes()
                return self
            except NodesNotAlive:
                # a loaded machine, not a wrong cluster: stop what this attempt started and start it all again
                self.stop()
                if attempt == STARTUP_ATTEMPTS:
                    raise
                log.warning("local cluster: its nodes did not all join in time (loaded machine); starting "
                            "again (attempt %d of %d)", attempt + 1, STARTUP_ATTEMPTS)
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def _start_processes(self) -> None:
        if self.mlflow is not None:
            self.mlflow.launch()  # starts in parallel with Ray; health is checked at the end
            self.session_ids["mlflow"] = self.mlflow.pid or 0
        head = self._spawn_ray_start("head", self.head_command())
        if not self.ray_nodes.wait_ray_start("head", head):
            # a worker's `ray start` fails at once while the GCS does not know the head node
            log.warning("local cluster: `ray start` gave up waiting for the head to register (Ray's fixed 30 s; a "
                        "loaded machine); its processes run on, waiting for it to join")
            self.wait_for_nodes(1)
        workers = {
            f"worker-{i}": self._spawn_ray_start(f"worker-{i}", self.worker_command(i))
            for i in range(self.config.num_workers)
        }
        late = [role for role, launcher in workers.items() if not self.ray_nodes.wait_ray_start(role, launcher)]
        if late:
            log.warning("local cluster: `ray start` gave up waiting for %s to register (Ray's fixed 30 s; a loaded "
                        "machine); their processes run on, waiting for the nodes to join", ", ".join(late))
        if self.mlflow is not None:
            self.mlflow.wait_healthy()
        self.wait_for_nodes(1 + self.config.num_workers)
        self._write_state()
        self._write_env_file()

    def _spawn_ray_start(self, role: str, command: list[str]) -> subprocess.Popen[bytes]:
        launcher = self.ray_nodes.launch(role, command, self._node_env(role))
        self.session_ids[role] = launcher.pid  # the node's daemons stay in the session it leads
        self._write_state()
        return launcher

    def stop(self) -> list[str]:
        """Stop every process of this cluster and verify none is left; returns what was signalled.

        Also removes the state, PID, env and token files (logs and the MLflow store stay)."""
        stopped = stop_owned(self.cluster_id, self.session_ids.values())
        if self.mlflow is not None:
            self.mlflow.stop()  # reaps our direct child if this process launched it
        for name in (STATE_FILE, ENV_FILE, TOKEN_FILE):
            (self.state_dir / name).unlink(missing_ok=True)
        for pid_file in (self.state_dir / "pids").glob("*.pid"):
            pid_file.unlink()
        if not self.ray_temp_root.is_relative_to(self.state_dir) and self.ray_temp_root.exists():
            shutil.rmtree(self.ray_temp_root, ignore_errors=True)
        self.session_ids = {}
        return [f"{p.name}[{p.pid}]" for p in stopped]

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- inspection and fault injection

    def _dashboard_get(self, path: str) -> Any:
        return self.ray_nodes.dashboard_get(path)

    def nodes(self) -> list[dict[str, object]]:
        """Nodes as the GCS sees them (state API over the dashboard, with the token)."""
        return self.ray_nodes.nodes()

    def job_client(self) -> JobSubmissionClient:
        """A Ray job client of this cluster's job server, with its token."""
        return self.ray_nodes.job_client()

    def job_status(self, submission_id: str) -> JobStatus:
        """Status of a submitted job as the job server reports it: PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED."""
        return self.ray_nodes.job_status(submission_id)

    def wait_for_nodes(self, alive: int, timeout_s: float | None = None) -> list[dict[str, object]]:
        """Poll until exactly `alive` nodes are ALIVE; returns the node list."""
        return self.ray_nodes.wait_for_nodes(alive, timeout_s)

    def _single_process(self, role: str, name: str) -> int:
        matches = [p.pid for p in self.processes(role) if p.name == name]
        if len(matches) != 1:
            raise LocalClusterError(
                f"cluster {self.cluster_id}: expected one {name} for {role}, found {matches}"
            )
        return matches[0]

    def worker_raylet_pid(self, index: int) -> int:
        """PID of worker node `index`'s raylet; killing it takes that node (and its workers) down."""
        return self._single_process(f"worker-{index}", "raylet")

    def head_gcs_pid(self) -> int:
        return self._single_process("head", "gcs_server")

    def kill_worker(self, index: int, sig: signal.Signals = signal.SIGKILL) -> int:
        """Send `sig` to worker node `index`'s raylet (a node failure); returns the PID signalled."""
        pid = self.worker_raylet_pid(index)
        psutil.Process(pid).send_signal(sig)
        return pid
