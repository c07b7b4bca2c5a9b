"""The MLflow server's cost per request: our server (basic-auth app, checked credentials kept for
:data:`reid.runtime.localcluster.mlflow_server.AUTH_CACHE_TTL_S`) against the same server with MLflow's default of
checking the password hash on every request (the baseline, run first). Each arm starts a server of its own, logs
``--requests`` metrics one call at a time as a job does, and prints milliseconds per call; then the ratio.

    python tests/bench/bench_mlflow_auth.py [--requests 100] [--out runs/bench-mlflow-auth]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def _arm(root: Path, cache: bool, requests: int) -> float:
    """Seconds per ``log_metric`` call against a fresh server under ``root``."""
    from mlflow.tracking import MlflowClient

    from reid.runtime.localcluster import free_ports
    from reid.runtime.localcluster import mlflow_server as ms

    class Server(ms.MlflowServer):
        def server_env(self) -> dict[str, str]:
            env = super().server_env()
            if not cache:  # MLflow's default: no cache, a password hash check per request
                ours = f"auth_cache_ttl_seconds = {ms.AUTH_CACHE_TTL_S}"
                text = self.auth_config_path.read_text()
                assert ours in text, f"{self.auth_config_path} no longer sets {ours!r}: the baseline would be cached"
                self.auth_config_path.write_text(text.replace(ours, "auth_cache_ttl_seconds = 0"))
            return env

    shutil.rmtree(root, ignore_errors=True)
    (port,) = free_ports(1)
    with Server(root, port) as server:
        os.environ.update(server.client_env())
        client = MlflowClient(server.uri)
        run = client.create_run(client.create_experiment("bench"))
        start = time.perf_counter()
        for step in range(requests):
            client.log_metric(run.info.run_id, "m", float(step), step=step)
        return (time.perf_counter() - start) / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100, help="log_metric calls per arm")
    parser.add_argument("--out", default=str(REPO / "runs" / "bench-mlflow-auth"), help="servers' roots")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    per_call = {}
    for name, cache in (("password hash per request (MLflow's default)", False), ("credentials cached", True)):
        per_call[name] = _arm(out / ("cached" if cache else "uncached"), cache, args.requests)
        print(f"{name}: {per_call[name] * 1000:.1f} ms per log_metric ({args.requests} calls)", flush=True)
    baseline, ours = per_call.values()
    print(f"ratio uncached/cached: {baseline / ours:.1f}x")


if __name__ == "__main__":
    main()
