"""reid.runtime.localcluster and cluster/local.sh: a real head + 2 worker nodes (`ray start`) + MLflow on 127.0.0.1.

One cluster serves the module; the tests run in file order (the last ones kill a node and stop it all).
"""

from __future__ import annotations

import base64
import configparser
import json
import logging
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient
from ray.job_submission import JobStatus

from reid.core.errors import ConfigError
from reid.runtime.localcluster import (
    ENV_FILE,
    STATE_FILE,
    LocalCluster,
    LocalClusterConfig,
    LocalClusterError,
    free_ports,
    process_alive,
    read_process,
    worker_resource,
)
from reid.runtime.localcluster.mlflow_server import (
    AUTH_CACHE_TTL_S,
    PASSWORD_ENV,
    USERNAME_ENV,
    MlflowServer,
    credentials,
)
from reid.runtime.localcluster.ray_nodes import NodesNotAlive
from reid.runtime.tracking import Tracker

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
LOCAL_SH = REPO / "cluster" / "local.sh"
RAY = str(Path(sys.executable).parent / "ray")  # the project's Ray, as the cluster runs it

JOB_SCRIPT = """
    import sys

    import mlflow
    import ray

    ray.init()
    alive = [node for node in ray.nodes() if node["Alive"]]

    @ray.remote(num_cpus=0)
    def node_id() -> str:
        return ray.get_runtime_context().get_node_id()

    placed = {name: ray.get(node_id.options(resources={name: 1}).remote()) for name in ("worker_a", "worker_b")}
    mlflow.set_experiment(sys.argv[1])
    with mlflow.start_run():
        mlflow.log_metric("alive_nodes", len(alive))
        mlflow.log_params(placed)
"""

JOB_STATUS_FROM_ENV = (
    "import sys; from ray.job_submission import JobSubmissionClient; "
    "print(JobSubmissionClient().get_job_status(sys.argv[1]).value)"
)


def _run(
    command: list[str], env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _local_sh(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return _run([str(LOCAL_SH), *args], timeout=timeout)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    gcs, dashboard, client, mlflow = free_ports(4)
    config = LocalClusterConfig(
        state_dir=str(tmp_path_factory.mktemp("local-cluster")),
        gcs_port=gcs,
        dashboard_port=dashboard,
        client_server_port=client,
        mlflow_port=mlflow,
        object_store_mb=200,
        health_check_period_ms=1000,
        health_check_failure_threshold=3,
    )
    local_cluster = LocalCluster(config)
    try:
        with pytest.MonkeyPatch.context() as env:
            for name in (USERNAME_ENV, PASSWORD_ENV):  # the cluster generates its MLflow admin's password
                env.delenv(name, raising=False)
            started = time.monotonic()
            local_cluster.start()
            print(f"cluster up in {time.monotonic() - started:.1f} s")
            for name, value in _sourced(local_cluster.state_dir / ENV_FILE).items():  # this process: a client
                if name.startswith("MLFLOW_TRACKING_"):
                    env.setenv(name, value)
            yield local_cluster
    finally:
        local_cluster.stop()


def _sourced(env_file: Path) -> dict[str, str]:
    """What `source <env file>` exports into a shell."""
    shell = _run(["bash", "-c", f"set -a; source {env_file}; env -0"], env={})
    assert shell.returncode == 0, shell.stderr
    return dict(line.split("=", 1) for line in shell.stdout.split("\0") if "=" in line)


def _ray_nodes(cluster: LocalCluster) -> list[dict]:
    listed = _run(
        [RAY, "list", "nodes", "--address", cluster.dashboard_url, "--format", "json"],
        env=cluster.subprocess_env(),
    )
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)


def _node_with(nodes: list[dict], resource: str) -> str:
    (node_id,) = [node["node_id"] for node in nodes if resource in node["resources_total"]]
    return node_id


def test_down_without_a_cluster_is_a_clean_no_op(tmp_path: Path) -> None:
    state_dir = tmp_path / "never-started"
    result = _local_sh("down", "--state-dir", str(state_dir))
    assert result.returncode == 0, result.stderr
    assert "nothing to stop" in result.stdout
    assert not state_dir.exists()
    status = _local_sh("status", "--state-dir", str(state_dir))
    assert status.returncode == 1 and "no local cluster" in status.stdout


def test_failed_up_leaves_nothing_running(tmp_path: Path) -> None:
    gcs, dashboard, client, mlflow = free_ports(4)
    impossible = LocalClusterConfig(
        state_dir=str(tmp_path / "state"),
        gcs_port=gcs,
        dashboard_port=dashboard,
        client_server_port=client,
        mlflow_port=mlflow,
        object_store_mb=100_000_000,  # 100 TB: the head's `ray start` fails after MLflow was launched
    )
    failing = LocalCluster(impossible)
    with pytest.raises(LocalClusterError, match="ray start` for head exited"):
        failing.start()
    assert not failing.processes()
    assert not (tmp_path / "state" / STATE_FILE).exists()


def test_a_head_that_registers_after_ray_start_gave_up_still_joins(tmp_path: Path, caplog) -> None:
    """Ray gives a raylet a fixed 30 s to register with the GCS; on a loaded machine `ray start` then exits 1
    with "timed out during startup" but leaves the node's processes running. The head's raylet is suspended
    until `ray start` has given up on it (what a loaded machine does to it): the cluster waits for it to join,
    then starts its worker, whose `ray start` would fail at once while the GCS does not know the head."""
    gcs, dashboard, client, mlflow = free_ports(4)
    config = LocalClusterConfig(state_dir=str(tmp_path / "state"), gcs_port=gcs, dashboard_port=dashboard,
                                client_server_port=client, mlflow_port=mlflow, num_workers=1, with_mlflow=False,
                                object_store_mb=100)
    local_cluster = LocalCluster(config)
    paused: list[int] = []

    def pause_the_head_raylet() -> None:
        deadline = time.monotonic() + 60
        while not paused and time.monotonic() < deadline:
            raylets = [p.pid for p in local_cluster.processes("head") if p.name == "raylet"]
            if raylets:
                psutil.Process(raylets[0]).suspend()
                paused.append(raylets[0])
                head_log, until = local_cluster.state_dir / "logs" / "head.log", time.monotonic() + 90
                while "timed out during startup" not in head_log.read_text() and time.monotonic() < until:
                    time.sleep(0.2)  # until `ray start` has given up on it (Ray's 30 s)
                psutil.Process(raylets[0]).resume()
            time.sleep(0.05)

    pauser = threading.Thread(target=pause_the_head_raylet, daemon=True)
    try:
        with caplog.at_level(logging.WARNING, logger="reid.runtime.localcluster.cluster"):
            pauser.start()
            local_cluster.start()
        pauser.join()
        assert paused, "the head's raylet was never seen"
        assert "timed out during startup" in (local_cluster.state_dir / "logs" / "head.log").read_text()
        assert "gave up waiting for the head" in caplog.text and "starting again" not in caplog.text
        assert [node["state"] for node in local_cluster.wait_for_nodes(2)] == ["ALIVE"] * 2
    finally:
        local_cluster.stop()
    assert not local_cluster.processes()


def test_nodes_that_do_not_join_in_time_are_started_again(tmp_path: Path, monkeypatch) -> None:
    """If the nodes are still not all ALIVE after the wait, the attempt stops everything it started and the
    whole start runs again (up to 3 times)."""
    gcs, dashboard, client, mlflow = free_ports(4)
    config = LocalClusterConfig(state_dir=str(tmp_path / "state"), gcs_port=gcs, dashboard_port=dashboard,
                                client_server_port=client, mlflow_port=mlflow, num_workers=0, with_mlflow=False,
                                object_store_mb=100)
    local_cluster = LocalCluster(config)
    real_wait, calls, first_heads = local_cluster.ray_nodes.wait_for_nodes, [], []

    def first_times_out(alive, timeout_s=None):
        nodes = real_wait(alive, timeout_s)  # the head really joined: the retry must stop it first
        calls.append(alive)
        if len(calls) == 1:
            first_heads.append(read_process(local_cluster.head_gcs_pid()))
            raise NodesNotAlive("cluster c: expected 1 alive nodes; last seen: []")
        return nodes

    monkeypatch.setattr(local_cluster.ray_nodes, "wait_for_nodes", first_times_out)
    try:
        local_cluster.start()
        assert calls == [1, 1] and not process_alive(first_heads[0])
        assert local_cluster.head_gcs_pid() != first_heads[0].pid
    finally:
        local_cluster.stop()
    assert not local_cluster.processes()


def test_three_nodes_alive_with_their_own_resources(cluster: LocalCluster) -> None:
    nodes = _ray_nodes(cluster)
    assert [node["state"] for node in nodes] == ["ALIVE"] * 3
    assert sum(node["is_head_node"] for node in nodes) == 1
    workers = {_node_with(nodes, worker_resource(i)) for i in range(2)}
    assert len(workers) == 2, "each worker node offers its own custom resource"
    assert all(node["resources_total"]["CPU"] == 1 for node in nodes)


def test_env_file_and_token(cluster: LocalCluster) -> None:
    env_text = (cluster.state_dir / ENV_FILE).read_text()
    assert f"export RAY_ADDRESS={cluster.dashboard_url}" in env_text
    assert "export RAY_AUTH_MODE=token" in env_text
    assert f"export MLFLOW_TRACKING_URI={cluster.mlflow_uri}" in env_text
    assert "export MLFLOW_TRACKING_USERNAME=admin" in env_text and "export MLFLOW_TRACKING_PASSWORD=" in env_text
    assert cluster.token_path.stat().st_mode & 0o077 == 0, "token readable by its owner only"
    assert (cluster.state_dir / ENV_FILE).stat().st_mode & 0o077 == 0, "MLflow's password: owner only"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{cluster.dashboard_url}/api/v0/nodes", timeout=10)
    assert refused.value.code == 401, "the job server must demand the token"


def test_job_submit_reaches_every_worker_and_mlflow(cluster: LocalCluster, tmp_path: Path) -> None:
    working_dir = tmp_path / "job"
    working_dir.mkdir()
    (working_dir / "job.py").write_text(textwrap.dedent(JOB_SCRIPT))
    submission_id = f"reid-smoke-{cluster.cluster_id}"
    submitted = _run(
        [
            RAY, "job", "submit", "--address", cluster.dashboard_url, "--submission-id", submission_id,
            "--working-dir", str(working_dir), "--", "python", "job.py", "cluster-smoke",
        ],
        env=cluster.subprocess_env(),
        timeout=180,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    assert cluster.job_status(submission_id) == JobStatus.SUCCEEDED
    # what the env file gives Ray's job client (`jobs/pipeline.py --submit`): the cluster and its token
    from_env = _run([sys.executable, "-c", JOB_STATUS_FROM_ENV, submission_id], env=cluster.subprocess_env())
    assert from_env.returncode == 0 and from_env.stdout.strip() == "SUCCEEDED", from_env.stderr[-3000:]

    client = MlflowClient(tracking_uri=cluster.mlflow_uri)
    experiment = client.get_experiment_by_name("cluster-smoke")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.metrics["alive_nodes"] == 3
    nodes = _ray_nodes(cluster)
    assert run.data.params == {r: _node_with(nodes, r) for r in ("worker_a", "worker_b")}


def _status(uri: str, login: tuple[str, str] | None = None) -> int:
    """HTTP status of one request to the MLflow server at ``uri``, with (username, password) or none."""
    headers = {}
    if login:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(login).encode()).decode()
    request = urllib.request.Request(f"{uri}/api/2.0/mlflow/experiments/search?max_results=1", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_mlflow_demands_the_credentials_of_the_env_file(cluster: LocalCluster) -> None:
    """MLflow's REST API refuses a request without credentials or with a wrong password; a client with the
    credentials the env file exports logs a run (the job above logged with those the nodes got)."""
    assert _status(cluster.mlflow_uri) == 401
    assert _status(cluster.mlflow_uri, ("admin", "not-the-password")) == 401
    sourced = _sourced(cluster.state_dir / ENV_FILE)
    with pytest.MonkeyPatch.context() as env:
        for name in (USERNAME_ENV, PASSWORD_ENV):
            env.setenv(name, sourced[name])
        client = MlflowClient(tracking_uri=sourced["MLFLOW_TRACKING_URI"])
        run = client.create_run(client.create_experiment("credentials-from-the-env-file"))
        client.log_metric(run.info.run_id, "logged", 1.0)
        assert client.get_run(run.info.run_id).data.metrics == {"logged": 1.0}
        # a job with a wrong password stops before any work, saying so (not "MLflow unavailable, buffering")
        env.setenv(PASSWORD_ENV, "not-the-password")
        with pytest.raises(ConfigError, match=r"refused this job's credentials \(UNAUTHENTICATED\): set "
                                              r"MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"):
            Tracker(sourced["MLFLOW_TRACKING_URI"], "wrong-password")


def test_a_changed_or_deleted_user_is_refused_at_once_despite_the_auth_cache(cluster: LocalCluster) -> None:
    """The server keeps checked credentials for a while (not one password hash per request); a password change
    or a deleted user still takes effect on the next request."""
    from mlflow.server import get_app_client

    assert cluster.mlflow is not None
    auth = get_app_client("basic-auth", tracking_uri=cluster.mlflow_uri)  # as the admin of the environment
    auth.create_user("reviewer", "first-password-1")
    assert _status(cluster.mlflow_uri, ("reviewer", "first-password-1")) == 200  # checked once, now cached
    assert _status(cluster.mlflow_uri, ("reviewer", "first-password-1")) == 200
    auth.update_user_password("reviewer", "second-password-2")
    assert _status(cluster.mlflow_uri, ("reviewer", "first-password-1")) == 401
    assert _status(cluster.mlflow_uri, ("reviewer", "second-password-2")) == 200
    auth.delete_user("reviewer")
    assert _status(cluster.mlflow_uri, ("reviewer", "second-password-2")) == 401


def test_mlflow_credentials_from_the_environment_else_generated_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without MLFLOW_TRACKING_USERNAME / _PASSWORD the admin is `admin` with a password generated once, kept
    owner-only under the server's root; with them, the server's admin is theirs (no server started here)."""
    monkeypatch.delenv(USERNAME_ENV, raising=False)
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    username, password = credentials(tmp_path)
    assert username == "admin" and len(password) >= 12
    assert credentials(tmp_path) == (username, password), "generated once"
    for kept in (tmp_path / "auth", tmp_path / "auth" / "password"):
        assert kept.stat().st_mode & 0o077 == 0, kept
    monkeypatch.setenv(USERNAME_ENV, "reid")
    monkeypatch.setenv(PASSWORD_ENV, "from-the-environment")
    server = MlflowServer(tmp_path, port=1)
    assert server.client_env() == {"MLFLOW_TRACKING_URI": "http://127.0.0.1:1", USERNAME_ENV: "reid",
                                   PASSWORD_ENV: "from-the-environment"}
    env = server.server_env()
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == "from-the-environment"
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == (tmp_path / "auth" / "secret_key").read_text()
    auth = configparser.ConfigParser()
    auth.read(env["MLFLOW_AUTH_CONFIG_PATH"])
    assert auth["mlflow"]["admin_username"] == "reid"
    assert auth["mlflow"]["auth_cache_ttl_seconds"] == str(AUTH_CACHE_TTL_S)
    assert auth["mlflow"]["database_uri"] == f"sqlite:///{tmp_path.resolve() / 'auth' / 'basic_auth.db'}"
    assert "--app-name" in server.command() and "basic-auth" in server.command()
    monkeypatch.setenv(PASSWORD_ENV, "short")
    with pytest.raises(LocalClusterError, match="at least 12 characters"):
        server.server_env()


def test_mlflow_restart_keeps_runs(cluster: LocalCluster) -> None:
    """What an MLflow-outage fault test does: stop the server, start it again on the same store."""
    assert cluster.mlflow is not None
    client = MlflowClient(tracking_uri=cluster.mlflow_uri)
    (before,) = client.search_runs([client.get_experiment_by_name("cluster-smoke").experiment_id])
    cluster.mlflow.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{cluster.mlflow_uri}/health", timeout=5)
    cluster.mlflow.start()
    assert client.get_run(before.info.run_id).data.metrics == before.data.metrics


def test_up_refuses_while_running(cluster: LocalCluster) -> None:
    with pytest.raises(LocalClusterError, match="already running"):
        LocalCluster(cluster.config).start()
    result = _local_sh("up", "--state-dir", str(cluster.state_dir))
    assert result.returncode == 2 and "already running" in result.stderr
    status = _local_sh("status", "--state-dir", str(cluster.state_dir))
    assert status.returncode == 0 and "3 alive nodes" in status.stdout, status.stdout


def test_kill_worker_takes_down_exactly_that_node(cluster: LocalCluster) -> None:
    before = {_node_with(_ray_nodes(cluster), worker_resource(i)): i for i in range(2)}
    survivor_raylet = cluster.worker_raylet_pid(0)
    killed = cluster.kill_worker(1)
    assert killed != survivor_raylet
    deadline = time.monotonic() + 10
    while read_process(killed) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert read_process(killed) is None
    nodes = cluster.wait_for_nodes(alive=2, timeout_s=90)
    dead = [node["node_id"] for node in nodes if node["state"] == "DEAD"]
    assert [before[node_id] for node_id in dead] == [1]
    assert read_process(survivor_raylet) is not None


def test_down_stops_exactly_what_up_started(cluster: LocalCluster) -> None:
    processes = cluster.processes()
    names = {p.name for p in processes}
    assert {"gcs_server", "raylet"} <= names
    assert cluster.mlflow is not None and cluster.mlflow.pid in {p.pid for p in processes}
    started = time.monotonic()
    result = _local_sh("down", "--state-dir", str(cluster.state_dir))
    print(f"down in {time.monotonic() - started:.1f} s")
    assert result.returncode == 0, result.stderr
    assert not [p for p in processes if process_alive(p)]
    assert not cluster.processes()
    assert not (cluster.state_dir / STATE_FILE).exists() and not (cluster.state_dir / ENV_FILE).exists()
    again = _local_sh("down", "--state-dir", str(cluster.state_dir))
    assert again.returncode == 0 and "nothing to stop" in again.stdout
