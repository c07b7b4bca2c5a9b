#!/usr/bin/env bash
# Local multi-node Ray cluster + MLflow on this machine: cluster/local.sh up|down|status [--state-dir DIR] ...
# Thin wrapper; the logic is in cluster/localcluster.py and reid/runtime/localcluster/. See cluster/README.md.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$repo/.venv/bin/python}"
if [[ ! -x "$python" ]]; then
    echo "error: $python not found; run 'make venv' first (or set PYTHON)" >&2
    exit 2
fi
exec "$python" "$repo/cluster/localcluster.py" "$@"
