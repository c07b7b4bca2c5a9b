"""`mlflow server` for a local cluster (or a test on its own): SQLite store, proxied artifacts, restartable."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from reid.localcluster.processes import (
    TAG_ENV,
    LocalClusterError,
    ProcessInfo,
    _launch,
    _log_tail,
    _require_free_port,
    _venv_tool,
    owned_processes,
    stop_owned,
)


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
