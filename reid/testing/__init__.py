"""Helpers for tests and local runs that need real processes: a multi-node Ray cluster, an MLflow server."""

from reid.testing.cluster import LocalCluster, LocalClusterConfig, LocalClusterError, MlflowServer

__all__ = ["LocalCluster", "LocalClusterConfig", "LocalClusterError", "MlflowServer"]
