"""Stages: one package or module per batch job (crop, train, label, report, review, sweeps, pipeline,
import_checkpoint), each behind a ``jobs/`` or ``tune/`` entry point. A stage imports core and runtime, never
another stage (one exception: sweeps runs train's loops)."""
