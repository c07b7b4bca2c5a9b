#!/usr/bin/env bash
# Submit every stage of the pipeline with `ray job submit` to the cluster RAY_ADDRESS names, one after another.
#   cluster/local.sh up && source runs/local-cluster/env && cluster/run_pipeline.sh --out "$PWD/runs/cluster-demo"
# Extra arguments go to jobs/pipeline.py (see `python jobs/pipeline.py --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${RAY_ADDRESS:?set RAY_ADDRESS (e.g. source runs/local-cluster/env)}"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
exec .venv/bin/python jobs/pipeline.py --submit "$@"
