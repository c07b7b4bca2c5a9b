"""The shape and ports of a local cluster: `LocalClusterConfig` (the defaults are listed in cluster/README.md)."""

from __future__ import annotations

import string
from dataclasses import dataclass

from reid.runtime.localcluster.processes import LocalClusterError


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
