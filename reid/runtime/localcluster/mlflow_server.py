"""`mlflow server` for a local cluster, a cluster's head or a test: SQLite store, proxied artifacts, MLflow's
basic-auth app, restartable.

Credentials. Clients authenticate with ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` (what MLflow's
client reads). The server takes the same two variables from its environment for its admin user; without them the
admin is ``admin`` with a password generated once and kept, readable by its owner only, in ``<root>/auth/``,
where the server's auth database and its CSRF secret key live too. MLflow creates the admin user on the first
start against an empty auth database only: a later start with another password keeps the first one.

``python -m reid.runtime.localcluster.mlflow_server --root DIR [--host ...]`` runs the server in the foreground (what
``ray_cluster.yaml`` runs on the head).
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from reid.runtime.localcluster.processes import (
    TAG_ENV,
    LocalClusterError,
    ProcessInfo,
    _launch,
    _log_tail,
    _require_free_port,
    _venv_tool,
    _write_atomic,
    owned_processes,
    stop_owned,
)

USERNAME_ENV = "MLFLOW_TRACKING_USERNAME"
PASSWORD_ENV = "MLFLOW_TRACKING_PASSWORD"
SECRET_KEY_ENV = "MLFLOW_FLASK_SERVER_SECRET_KEY"  # the basic-auth app's CSRF key
DEFAULT_USERNAME = "admin"
DEFAULT_PERMISSION = "READ"  # what a user an admin adds may do on others' experiments (MLflow's default)
AUTH_DIR = "auth"
MIN_PASSWORD_LENGTH = 12  # MLflow's password policy for the admin it creates
# How long the server trusts a checked (user, password): without it every request pays the password hash check
# (PBKDF2, tuned to be slow), which makes each MLflow call of a job cost CPU on the server. MLflow drops a user's
# entries when the user's password changes or the user is deleted through its API (in the server worker that got
# the change: with --workers above 1 the others see it, like any other edit of the auth database, after this many
# seconds).
AUTH_CACHE_TTL_S = 300
# The admin settings the server would take from its environment instead of the auth config.
_ADMIN_ENV = ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD")


def _auth_dir(root: Path) -> Path:
    """``<root>/auth``, owner-only: the admin's password, the CSRF key, the auth database (password hashes)."""
    auth = root / AUTH_DIR
    auth.mkdir(parents=True, exist_ok=True)
    auth.chmod(0o700)
    return auth


def _secret(path: Path) -> str:
    """The secret kept in `path`, generated (owner-only) the first time."""
    if not path.exists():
        _write_atomic(path, secrets.token_urlsafe(24), mode=0o600)
    return path.read_text().strip()


def credentials(root: Path | str) -> tuple[str, str]:
    """(username, password) of the admin of the server at `root`: ``MLFLOW_TRACKING_USERNAME`` and
    ``MLFLOW_TRACKING_PASSWORD`` when set, else ``admin`` and the password generated once in ``<root>/auth``."""
    username = os.environ.get(USERNAME_ENV) or DEFAULT_USERNAME
    password = os.environ.get(PASSWORD_ENV) or _secret(_auth_dir(Path(root)) / "password")
    return username, password


class MlflowServer:
    """`mlflow server --app-name basic-auth` on host:port with a SQLite store and proxied artifacts under `root`
    (or `backend_store_uri`, `artifacts_destination`); restartable.

    Stop and start again on the same root to simulate an outage: runs, artifacts and users persist.
    """

    def __init__(
        self,
        root: Path | str,
        port: int,
        host: str = "127.0.0.1",
        tag: str | None = None,
        startup_timeout_s: float = 90.0,
        backend_store_uri: str | None = None,
        artifacts_destination: str | None = None,
        workers: int = 1,
    ) -> None:
        self.root = Path(root).resolve()
        self.port = port
        self.host = host
        self.tag = tag or f"mlflow-{secrets.token_hex(4)}/mlflow"
        self.startup_timeout_s = startup_timeout_s
        self.backend_store_uri = backend_store_uri or f"sqlite:///{self.root / 'mlflow.db'}"
        self.artifacts_destination = artifacts_destination or str(self.root / "artifacts")
        self.workers = workers
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        """Tracking URI for clients (`MLFLOW_TRACKING_URI`)."""
        return f"http://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    @property
    def auth_config_path(self) -> Path:
        return self.root / AUTH_DIR / "basic_auth.ini"

    @property
    def pid(self) -> int | None:
        """PID of the `mlflow server` process we launched, while it runs."""
        return self._popen.pid if self._popen is not None and self._popen.poll() is None else None

    def client_env(self) -> dict[str, str]:
        """What an MLflow client of this server needs: its URI and the admin's credentials."""
        username, password = credentials(self.root)
        return {"MLFLOW_TRACKING_URI": self.uri, USERNAME_ENV: username, PASSWORD_ENV: password}

    def command(self) -> list[str]:
        return [
            _venv_tool("mlflow"), "server", "--app-name", "basic-auth",
            "--host", self.host, "--port", str(self.port),
            "--backend-store-uri", self.backend_store_uri,
            "--artifacts-destination", self.artifacts_destination,
            "--workers", str(self.workers),
        ]  # fmt: skip

    def server_env(self) -> dict[str, str]:
        """The server's environment: this process's, with the auth config (written here) and the admin's
        password, its CSRF key and no job runner (MLflow's GenAI job queue, which we do not use)."""
        username, password = credentials(self.root)
        if len(password) < MIN_PASSWORD_LENGTH:
            raise LocalClusterError(f"{PASSWORD_ENV} must have at least {MIN_PASSWORD_LENGTH} characters "
                                    "(MLflow's password policy)")
        auth = _auth_dir(self.root)
        _write_atomic(self.auth_config_path, "\n".join([
            "[mlflow]",
            f"default_permission = {DEFAULT_PERMISSION}",
            f"database_uri = sqlite:///{auth / 'basic_auth.db'}",
            f"admin_username = {username}",
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
            f"auth_cache_ttl_seconds = {AUTH_CACHE_TTL_S}",
        ]) + "\n")  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k not in _ADMIN_ENV}
        return {
            **env,
            "MLFLOW_AUTH_CONFIG_PATH": str(self.auth_config_path),
            "MLFLOW_AUTH_ADMIN_PASSWORD": password,  # read on the first start only (the admin's creation)
            SECRET_KEY_ENV: os.environ.get(SECRET_KEY_ENV) or _secret(auth / "secret_key"),
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }

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
        self._popen = _launch(self.command(), {**self.server_env(), TAG_ENV: self.tag}, self.log_path)

    def wait_healthy(self) -> None:
        """Block until GET /health answers 200, then check that the credentials of `client_env` are the
        admin's; raise with the server log if it exits or times out."""
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
                        self._check_credentials()
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        raise LocalClusterError(
            f"mlflow server on {self.uri} not healthy after {self.startup_timeout_s:.0f} s; log {self.log_path}:\n"
            f"{_log_tail(self.log_path)}"
        )

    def _check_credentials(self) -> None:
        username, password = credentials(self.root)
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        request = urllib.request.Request(f"{self.uri}/api/2.0/mlflow/experiments/search?max_results=1",
                                         headers={"Authorization": f"Basic {token}"})
        try:
            urllib.request.urlopen(request, timeout=10).close()
        except urllib.error.HTTPError as error:
            if error.code != 401:
                raise
            raise LocalClusterError(
                f"mlflow server on {self.uri} refuses user {username!r} and the password of {PASSWORD_ENV} (or of "
                f"{self.root / AUTH_DIR / 'password'}): its auth database {self.root / AUTH_DIR / 'basic_auth.db'} "
                "kept the password the admin was created with. Use that one, or delete the database to create "
                "the admin again"
            ) from None

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m reid.runtime.localcluster.mlflow_server",
                                     description="Run `mlflow server --app-name basic-auth` in the foreground.")
    parser.add_argument("--root", required=True, help="the SQLite store, the auth database and secrets")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--backend-store-uri", default=None, help="default: sqlite:///<root>/mlflow.db")
    parser.add_argument("--artifacts-destination", default=None, help="default: <root>/artifacts")
    parser.add_argument("--workers", type=int, default=1)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run the server in the foreground (this process becomes `mlflow server`)."""
    args = build_parser().parse_args(argv)
    server = MlflowServer(args.root, args.port, args.host, backend_store_uri=args.backend_store_uri,
                          artifacts_destination=args.artifacts_destination, workers=args.workers)
    server.root.mkdir(parents=True, exist_ok=True)
    command = server.command()
    os.execve(command[0], command, server.server_env())


if __name__ == "__main__":
    sys.exit(main())
