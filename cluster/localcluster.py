"""`cluster/local.sh up|down|status`: a local multi-node Ray cluster and an MLflow server on this machine.

    cluster/local.sh up                      # head + 2 worker nodes + MLflow, all on 127.0.0.1
    source runs/local-cluster/env            # RAY_ADDRESS, RAY_AUTH_MODE, RAY_AUTH_TOKEN_PATH, MLFLOW_TRACKING_URI,
                                             # MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD
    ray job submit --working-dir . -- python jobs/<stage>.py ...
    cluster/local.sh status
    cluster/local.sh down                    # stops exactly what `up` started

The process management lives in the `reid.runtime.localcluster` package (shared with the tests); this is its CLI.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.error
from pathlib import Path

from reid.runtime.localcluster import ENV_FILE, LocalCluster, LocalClusterConfig, LocalClusterError

REPO_ROOT = Path(__file__).resolve().parents[1]
STATE_DIR_ENV = "REID_LOCAL_CLUSTER_DIR"


def _default_state_dir() -> str:
    return os.environ.get(STATE_DIR_ENV, str(REPO_ROOT / "runs" / "local-cluster"))


def build_parser() -> argparse.ArgumentParser:
    defaults = LocalClusterConfig()
    parser = argparse.ArgumentParser(prog="cluster/local.sh", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("up", "start head, workers and MLflow"),
        ("down", "stop what `up` started"),
        ("status", "show what runs"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument(
            "--state-dir", default=_default_state_dir(),
            help=f"PID files, env file, logs, MLflow store (default: ${STATE_DIR_ENV} or runs/local-cluster)",
        )  # fmt: skip
        if name == "up":
            sub.add_argument("--workers", type=int, default=defaults.num_workers, help="worker nodes")
            sub.add_argument("--head-cpus", type=int, default=defaults.head_num_cpus)
            sub.add_argument(
                "--worker-cpus", type=int, default=defaults.worker_num_cpus, help="logical CPUs per worker"
            )
            sub.add_argument("--object-store-mb", type=int, default=defaults.object_store_mb, help="per node")
            sub.add_argument("--gcs-port", type=int, default=defaults.gcs_port)
            sub.add_argument("--dashboard-port", type=int, default=defaults.dashboard_port)
            sub.add_argument("--client-server-port", type=int, default=defaults.client_server_port)
            sub.add_argument("--mlflow-port", type=int, default=defaults.mlflow_port)
            sub.add_argument("--no-mlflow", action="store_true", help="do not start an MLflow server")
            sub.add_argument(
                "--timeout", type=float, default=defaults.startup_timeout_s, help="start-up limit, s"
            )
    return parser


def cmd_up(args: argparse.Namespace) -> int:
    config = LocalClusterConfig(
        state_dir=args.state_dir,
        num_workers=args.workers,
        head_num_cpus=args.head_cpus,
        worker_num_cpus=args.worker_cpus,
        object_store_mb=args.object_store_mb,
        gcs_port=args.gcs_port,
        dashboard_port=args.dashboard_port,
        client_server_port=args.client_server_port,
        mlflow_port=args.mlflow_port,
        with_mlflow=not args.no_mlflow,
        startup_timeout_s=args.timeout,
    )
    started = time.monotonic()
    cluster = LocalCluster(config).start()
    print(
        f"local cluster {cluster.cluster_id} up in {time.monotonic() - started:.1f} s: head + {args.workers} workers"
    )
    print(f"  dashboard / jobs : {cluster.dashboard_url}")
    print(f"  GCS              : {cluster.gcs_address}")
    if cluster.mlflow is not None:
        user = cluster.mlflow.client_env()["MLFLOW_TRACKING_USERNAME"]
        print(f"  MLflow           : {cluster.mlflow_uri} (user {user}; the password is in the env file)")
    print(f"  state            : {cluster.state_dir}")
    print(f"use it with: source {cluster.state_dir / ENV_FILE}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    cluster = LocalCluster.attach(args.state_dir)
    if cluster is None:
        print(f"no local cluster recorded in {Path(args.state_dir).resolve()}; nothing to stop")
        return 0
    stopped = cluster.stop()
    print(
        f"local cluster {cluster.cluster_id} stopped: {len(stopped)} processes signalled, none left running"
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    cluster = LocalCluster.attach(args.state_dir)
    if cluster is None:
        print(f"no local cluster recorded in {Path(args.state_dir).resolve()}")
        return 1
    roles = cluster.node_names() + (["mlflow"] if cluster.mlflow else [])
    counts = {role: len(cluster.processes(role)) for role in roles}
    print(f"local cluster {cluster.cluster_id} ({cluster.state_dir})")
    for role, count in counts.items():
        print(f"  {role:<10} {count} processes" + ("" if count else "  (DOWN)"))
    try:
        alive = [n for n in cluster.nodes() if n["state"] == "ALIVE"]
        print(f"  GCS sees {len(alive)} alive nodes at {cluster.dashboard_url}")
    except (urllib.error.URLError, OSError, KeyError, ValueError) as error:
        print(f"  dashboard {cluster.dashboard_url} not answering: {error}")
    return 0 if all(counts.values()) else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"up": cmd_up, "down": cmd_down, "status": cmd_status}
    try:
        return handlers[args.command](args)
    except LocalClusterError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
