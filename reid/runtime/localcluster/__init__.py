"""A local multi-node Ray cluster (head + worker nodes, each `ray start`) and an MLflow server, controlled by PID.

What `cluster/local.sh` runs and what the `cluster` tests start (cluster/README.md). Modules, each using only
those before it: `processes` (launching, finding and stopping our processes), `config` (`LocalClusterConfig`),
`mlflow_server` (`MlflowServer`), `ray_nodes` (`ray start` nodes and token auth), `cluster` (`LocalCluster`,
its state and env files).
"""

from reid.runtime.localcluster.cluster import ENV_FILE, STATE_FILE, LocalCluster
from reid.runtime.localcluster.config import LocalClusterConfig
from reid.runtime.localcluster.mlflow_server import MlflowServer
from reid.runtime.localcluster.processes import (
    TAG_ENV,
    LocalClusterError,
    ProcessInfo,
    owned_processes,
    port_in_use,
    process_alive,
    read_process,
    stop_owned,
    terminate,
)
from reid.runtime.localcluster.ray_nodes import TOKEN_FILE, RayNodes, worker_resource
from reid.runtime.raycluster import free_ports

__all__ = [
    "ENV_FILE",
    "STATE_FILE",
    "TAG_ENV",
    "TOKEN_FILE",
    "LocalCluster",
    "LocalClusterConfig",
    "LocalClusterError",
    "MlflowServer",
    "ProcessInfo",
    "RayNodes",
    "free_ports",
    "owned_processes",
    "port_in_use",
    "process_alive",
    "read_process",
    "stop_owned",
    "terminate",
    "worker_resource",
]
