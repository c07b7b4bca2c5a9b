"""Runtime: the shared Ray and MLflow plumbing (cluster connection, tracking, the model registry, Ray Data
readers, fault injection, the local cluster's processes). Imports core, never a stage."""
