"""A local multi-node Ray cluster (a head and N worker nodes, each its own `ray start`) and an MLflow server.

Used by the `cluster` tests and by `cluster/local.sh`. Linux only: processes are found through /proc.

Ownership. Every process we launch gets `REID_LOCAL_CLUSTER=<cluster id>/<role>` in its environment,
which Ray hands down to what it spawns, and each `ray start` runs in a session of its own whose id the
state directory records (PID files). Ray's process titles overwrite the environment of some daemons, and
job drivers get sessions of their own, so a process counts as ours if it carries the tag, runs in one of
our sessions, or descends from either. Stopping signals exactly those processes: never `ray stop`, never
a process name. The state directory also holds the config, the cluster's token and an env file to `source`.

Network. The dashboard/job server and MLflow bind 127.0.0.1. On Linux Ray rewrites
`--node-ip-address=127.0.0.1` to the machine's routable address and its GCS and raylets listen on all
interfaces (upstream ray#26293, ray#59110), so the cluster runs with token authentication and its own
token file (`RAY_AUTH_MODE=token`, `RAY_AUTH_TOKEN_PATH=<state dir>/auth_token`); `~/.ray` is never
read or written.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from reid.errors import ReidError

TAG_ENV = "REID_LOCAL_CLUSTER"
STATE_FILE = "state.json"
ENV_FILE = "env"
TOKEN_FILE = "auth_token"
# <temp dir>/session_<date>_<pid>/sockets/plasma_store must fit a 107-byte Unix socket path.
_MAX_RAY_TEMP_DIR_LEN = 40
_CLIENT_ENV_DROP = ("RAY_AUTH_TOKEN", "RAY_ADDRESS")


class LocalClusterError(ReidError, RuntimeError):
    """Starting, stopping or inspecting a local cluster failed; the message names the process and why."""


# --------------------------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class ProcessInfo:
    """One live process as /proc shows it; `start_ticks` tells a reused PID apart."""

    pid: int
    parent_pid: int
    name: str
    session_id: int
    start_ticks: int
    tag: str | None


def read_process(pid: int) -> ProcessInfo | None:
    """The process `pid`, or None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()  # fields[k - 3] is field k of proc(5)
    if fields[0] in ("Z", "X"):
        return None
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        environ = b""
    prefix = f"{TAG_ENV}=".encode()
    tag = next(
        (e[len(prefix) :].decode(errors="replace") for e in environ.split(b"\0") if e.startswith(prefix)),
        None,
    )
    return ProcessInfo(
        pid=pid,
        parent_pid=int(fields[1]),
        name=name,
        session_id=int(fields[3]),
        start_ticks=int(fields[19]),
        tag=tag,
    )


def _tag_matches(tag: str | None, wanted: str) -> bool:
    return tag is not None and (tag == wanted or tag.startswith(wanted + "/"))


def _snapshot() -> dict[int, ProcessInfo]:
    processes = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            info = read_process(int(entry.name))
            if info is not None:
                processes[info.pid] = info
    return processes


def owned_processes(
    tag: str, session_ids: Iterable[int] = (), trust_sessions: bool = False
) -> tuple[list[ProcessInfo], set[int]]:
    """Processes we started: tagged `tag` (or `tag/...`), in one of `session_ids`, or descended from those.

    Ray's process titles overwrite the environment of some daemons (dashboard modules, agents), so the
    tag alone misses them; the session ids (PID files) and the process tree catch them. A recorded
    session counts only while a tagged process still lives in it (a session id is not reused while it
    has members), unless `trust_sessions` says it was confirmed already. Returns (processes, sessions).
    """
    snapshot = _snapshot()
    owned = {pid for pid, info in snapshot.items() if _tag_matches(info.tag, tag)}
    sessions = set(session_ids)
    if not trust_sessions:
        sessions = {snapshot[pid].session_id for pid in owned} & sessions
    owned |= {pid for pid, info in snapshot.items() if info.session_id in sessions}
    children: dict[int, list[int]] = {}
    for info in snapshot.values():
        children.setdefault(info.parent_pid, []).append(info.pid)
    pending = list(owned)
    while pending:
        for child in children.get(pending.pop(), []):
            if child not in owned:
                owned.add(child)
                pending.append(child)
    return [snapshot[pid] for pid in sorted(owned)], sessions


def stop_owned(tag: str, session_ids: Iterable[int] = (), grace_s: float = 3.0) -> list[ProcessInfo]:
    """Terminate everything `owned_processes` finds, re-scanning for late children; returns what was
    signalled. Raises LocalClusterError naming any process still alive afterwards."""
    processes, sessions = owned_processes(tag, session_ids)
    signalled: list[ProcessInfo] = []
    for _ in range(3):
        if not processes:
            return signalled
        signalled += processes
        survivors = terminate(processes, grace_s)
        if survivors:
            raise LocalClusterError(f"{tag}: processes survived SIGKILL: {_describe(survivors)}")
        processes, _ = owned_processes(tag, sessions, trust_sessions=True)
    raise LocalClusterError(f"{tag}: processes keep appearing while stopping: {_describe(processes)}")


def process_alive(info: ProcessInfo) -> bool:
    """True while `info`'s process runs (not a zombie, not a new process that reused its PID)."""
    current = read_process(info.pid)
    return current is not None and current.start_ticks == info.start_ticks


def _signal_all(processes: Iterable[ProcessInfo], sig: signal.Signals) -> None:
    for info in processes:
        if process_alive(info):
            try:
                os.kill(info.pid, sig)
            except ProcessLookupError:
                pass


def _wait_gone(processes: list[ProcessInfo], timeout_s: float) -> list[ProcessInfo]:
    deadline = time.monotonic() + timeout_s
    remaining = [p for p in processes if process_alive(p)]
    while remaining and time.monotonic() < deadline:
        time.sleep(0.1)
        remaining = [p for p in remaining if process_alive(p)]
    return remaining


def terminate(processes: list[ProcessInfo], grace_s: float = 3.0) -> list[ProcessInfo]:
    """SIGTERM `processes`, SIGKILL what is left after `grace_s`; returns any that still survive."""
    _signal_all(processes, signal.SIGTERM)
    remaining = _wait_gone(processes, grace_s)
    _signal_all(remaining, signal.SIGKILL)
    return _wait_gone(remaining, 10.0)


def _describe(processes: Iterable[ProcessInfo]) -> str:
    return ", ".join(f"{p.name}[{p.pid}]" for p in processes)


# ------------------------------------------------------------------------------------------------ helpers


def _venv_tool(name: str) -> str:
    """The console script `name` next to this interpreter (the project's venv), so nodes run our versions."""
    candidate = Path(sys.executable).parent / name
    if not candidate.exists():
        raise LocalClusterError(f"{candidate} not found: install the project (`make venv`) first")
    return str(candidate)


def _require_free_port(port: int, what: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # Like the servers themselves: connections in TIME_WAIT do not block, a listener does.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError as error:
            raise LocalClusterError(
                f"port {port} for the {what} is in use ({error}); choose another"
            ) from None


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports nothing listens on right now (tests must not clash with a running cluster)."""
    probes = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def _write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def _launch(command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start `command` in a new session with output appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            command,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


# ------------------------------------------------------------------------------------------------- MLflow


class MlflowServer:
    """`mlflow server` on host:port with a SQLite store and proxied artifacts under `root`; restartable.

    Stop and start again on the same root to simulate an outage: runs and artifacts persist.
    """

    def __init__(
        self,
        root: Path | str,
        port: int,
        host: str = "127.0.0.1",
        tag: str | None = None,
        startup_timeout_s: float = 90.0,
    ) -> None:
        self.root = Path(root).resolve()
        self.port = port
        self.host = host
        self.tag = tag or f"mlflow-{secrets.token_hex(4)}/mlflow"
        self.startup_timeout_s = startup_timeout_s
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        """Tracking URI for clients (`MLFLOW_TRACKING_URI`)."""
        return f"http://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    @property
    def pid(self) -> int | None:
        """PID of the `mlflow server` process we launched, while it runs."""
        return self._popen.pid if self._popen is not None and self._popen.poll() is None else None

    def command(self) -> list[str]:
        return [
            _venv_tool("mlflow"), "server",
            "--host", self.host, "--port", str(self.port),
            "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination", str(self.root / "artifacts"),
            "--workers", "1",
        ]  # fmt: skip

    def processes(self) -> list[ProcessInfo]:
        """Live processes of this server (the `mlflow server` process, uvicorn and their children)."""
        return owned_processes(self.tag, self._session_ids())[0]

    def _session_ids(self) -> list[int]:
        return [self._popen.pid] if self._popen is not None else []

    def launch(self) -> None:
        """Start the server without waiting for it (pair with `wait_healthy`)."""
        if self.processes():
            raise LocalClusterError(f"MLflow server {self.tag} is already running on {self.uri}")
        _require_free_port(self.port, "MLflow server")
        self.root.mkdir(parents=True, exist_ok=True)
        # The GenAI job runner spawns a queue of consumers we do not use.
        env = {**os.environ, TAG_ENV: self.tag, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self._popen = _launch(self.command(), env, self.log_path)

    def wait_healthy(self) -> None:
        """Block until GET /health answers 200; raise with the server log if it exits or times out."""
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._popen is not None and self._popen.poll() is not None:
                raise LocalClusterError(
                    f"mlflow server exited with {self._popen.returncode}; log {self.log_path}:\n"
                    f"{_log_tail(self.log_path)}"
                )
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        raise LocalClusterError(
            f"mlflow server on {self.uri} not healthy after {self.startup_timeout_s:.0f} s; log {self.log_path}:\n"
            f"{_log_tail(self.log_path)}"
        )

    def start(self) -> MlflowServer:
        """Launch and wait until healthy; on failure nothing is left running."""
        self.launch()
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every process of this server and verify they are gone."""
        stop_owned(self.tag, self._session_ids())
        if self._popen is not None:
            self._popen.wait(timeout=10)  # reap our direct child; it is already dead
            self._popen = None

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# ------------------------------------------------------------------------------------------------- Ray


@dataclass(frozen=True)
class LocalClusterConfig:
    """Shape and ports of a local cluster. Ports default to non-standard values so that a second
    Ray (6379/8265/10001) or MLflow (5000) on the machine does not clash; tests pick free ports."""

    state_dir: str = "runs/local-cluster"
    num_workers: int = 2
    head_num_cpus: int = 1
    worker_num_cpus: int = 1
    object_store_mb: int = 200
    gcs_port: int = 46379
    dashboard_port: int = 48265
    client_server_port: int = 40001
    mlflow_port: int = 45000
    with_mlflow: bool = True
    startup_timeout_s: float = 120.0
    # GCS marks a node dead after `period x threshold` without a health-check answer (Ray: 3000 ms x 5);
    # fault tests shorten it to see a killed raylet's node go DEAD in seconds.
    health_check_period_ms: int | None = None
    health_check_failure_threshold: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.num_workers <= len(string.ascii_lowercase):
            raise LocalClusterError(f"num_workers must be in 0..26, got {self.num_workers}")
        if self.object_store_mb < 80:
            raise LocalClusterError(
                f"object_store_mb must be >= 80 (Ray's minimum), got {self.object_store_mb}"
            )


def _ray_config_env(**settings: int | None) -> dict[str, str]:
    """Ray reads any of its system settings from `RAY_<name>` in the environment of its processes."""
    return {f"RAY_{name}": str(value) for name, value in settings.items() if value is not None}


def worker_resource(index: int) -> str:
    """Custom resource that only worker node `index` offers: worker_a, worker_b, ..."""
    return f"worker_{string.ascii_lowercase[index]}"


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
        self.mlflow: MlflowServer | None = None
        if config.with_mlflow:
            self.mlflow = MlflowServer(
                self.state_dir / "mlflow", config.mlflow_port, tag=f"{self.cluster_id}/mlflow",
                startup_timeout_s=config.startup_timeout_s,
            )  # fmt: skip

    # -- addresses and environment

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.config.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        """Dashboard and job server (`ray job submit --address`)."""
        return f"http://127.0.0.1:{self.config.dashboard_port}"

    @property
    def mlflow_uri(self) -> str | None:
        return self.mlflow.uri if self.mlflow is not None else None

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

    def client_env(self) -> dict[str, str]:
        """Variables a client (ray job submit, MLflow) needs; also written to `<state dir>/env`."""
        env = {
            "RAY_ADDRESS": self.dashboard_url,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token_path),
        }
        if self.mlflow_uri is not None:
            env["MLFLOW_TRACKING_URI"] = self.mlflow_uri
        return env

    def subprocess_env(self) -> dict[str, str]:
        """This process's environment with `client_env()` applied: for `subprocess.run(["ray", ...])`."""
        base = {k: v for k, v in os.environ.items() if k not in _CLIENT_ENV_DROP}
        return {**base, **self.client_env()}

    def _node_env(self, role: str) -> dict[str, str]:
        env = self.subprocess_env()
        del env["RAY_ADDRESS"]  # `ray start --head` must not try to join another cluster
        env.update(
            {
                TAG_ENV: f"{self.cluster_id}/{role}",
                "RAY_USAGE_STATS_ENABLED": "0",
                **_ray_config_env(
                    health_check_period_ms=self.config.health_check_period_ms,
                    health_check_failure_threshold=self.config.health_check_failure_threshold,
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
        _write_atomic(self.state_dir / ENV_FILE, "\n".join(lines) + "\n")

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
        # Record the id before launching anything, so `down` can clean up a half-started cluster.
        self._write_state()
        _write_atomic(self.token_path, secrets.token_hex(32), mode=0o600)
        try:
            self._start_processes()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_processes(self) -> None:
        if self.mlflow is not None:
            self.mlflow.launch()  # starts in parallel with Ray; health is checked at the end
            self.session_ids["mlflow"] = self.mlflow.pid or 0
        self._wait_ray_start("head", self._spawn_ray_start("head", self.head_command()))
        workers = {
            f"worker-{i}": self._spawn_ray_start(f"worker-{i}", self.worker_command(i))
            for i in range(self.config.num_workers)
        }
        for role, launcher in workers.items():
            self._wait_ray_start(role, launcher)
        if self.mlflow is not None:
            self.mlflow.wait_healthy()
        self.wait_for_nodes(1 + self.config.num_workers)
        self._write_state()
        self._write_env_file()

    def _spawn_ray_start(self, role: str, command: list[str]) -> subprocess.Popen[bytes]:
        launcher = _launch(command, self._node_env(role), self.state_dir / "logs" / f"{role}.log")
        self.session_ids[role] = launcher.pid  # the node's daemons stay in the session it leads
        self._write_state()
        return launcher

    def _wait_ray_start(self, role: str, launcher: subprocess.Popen[bytes]) -> None:
        """Wait for a `ray start` to return 0; raise with its log otherwise."""
        log = self.state_dir / "logs" / f"{role}.log"
        try:
            code = launcher.wait(timeout=self.config.startup_timeout_s)
        except subprocess.TimeoutExpired:
            launcher.kill()
            launcher.wait()
            raise LocalClusterError(
                f"`ray start` for {role} did not return; log {log}:\n{_log_tail(log)}"
            ) from None
        if code != 0:
            raise LocalClusterError(
                f"`ray start` for {role} exited with {code}; log {log}:\n{_log_tail(log)}"
            )

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
        request = urllib.request.Request(
            f"{self.dashboard_url}{path}",
            headers={"Authorization": f"Bearer {self.token_path.read_text().strip()}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def nodes(self) -> list[dict[str, object]]:
        """Nodes as the GCS sees them (state API over the dashboard, with the token)."""
        return list(self._dashboard_get("/api/v0/nodes?limit=1000")["data"]["result"]["result"])

    def job_status(self, submission_id: str) -> str:
        """Status of a submitted job as the job server reports it: PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED."""
        return str(self._dashboard_get(f"/api/jobs/{urllib.parse.quote(submission_id)}")["status"])

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
        raise LocalClusterError(f"cluster {self.cluster_id}: expected {alive} alive nodes; last seen: {last}")

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
        os.kill(pid, sig)
        return pid
