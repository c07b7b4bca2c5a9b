"""ray_cluster.yaml passes Ray's own cluster-config validation (no cloud call) and stays closed to the internet."""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from reid.runtime.localcluster.mlflow_server import MlflowServer, build_parser

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "ray_cluster.yaml"
START_SECTIONS = ("head_start_ray_commands", "worker_start_ray_commands")
MLFLOW_SERVER = "-m reid.runtime.localcluster.mlflow_server"
MLFLOW_ENV_FILE = "~/.ray/comic-reid-mlflow.env"


def _prepare(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` does before it first talks to the cloud provider (commands._bootstrap_config)."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def prepared(raw: dict[str, Any]) -> dict[str, Any]:
    return _prepare(raw)


def _all_commands(config: dict[str, Any]) -> list[str]:
    sections = [key for key in config if key.endswith("_commands")]
    return [command for key in sections for command in config[key]]


def _ray_starts(config: dict[str, Any], section: str) -> list[str]:
    return [command for command in config[section] if "ray start" in command]


def _mlflow_server(config: dict[str, Any]) -> str:
    (command,) = [c for c in config["head_start_ray_commands"] if MLFLOW_SERVER in c]
    return command


def test_ray_accepts_the_config(prepared: dict[str, Any]) -> None:
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] == "head"
    assert set(prepared["available_node_types"]) == {"head", "cpu_worker", "gpu_worker"}


def test_ray_validation_rejects_a_broken_config(raw: dict[str, Any]) -> None:
    """The check above is only worth something if Ray's validator does reject mistakes."""
    broken = copy.deepcopy(raw)
    broken["available_node_types"]["gpu_worker"]["min_worker"] = 1  # typo of min_workers
    with pytest.raises(jsonschema.ValidationError):
        _prepare(broken)
    too_small = copy.deepcopy(raw)
    too_small["available_node_types"]["cpu_worker"]["min_workers"] = too_small["max_workers"] + 1
    with pytest.raises(ValueError, match="max_workers"):
        _prepare(too_small)


def test_autoscaling_bounds(prepared: dict[str, Any]) -> None:
    node_types = prepared["available_node_types"]
    assert node_types["head"]["max_workers"] == 0
    assert node_types["head"]["resources"] == {"CPU": 0}, "the head keeps its cores for GCS, drivers, MLflow"
    for name in ("cpu_worker", "gpu_worker"):
        bounds = node_types[name]
        assert 0 <= bounds["min_workers"] <= bounds["max_workers"] <= prepared["max_workers"], name
        assert bounds["max_workers"] > 0, name
    assert node_types["gpu_worker"]["node_config"]["InstanceType"].startswith(("g", "p")), (
        "GPU instance family"
    )


def test_every_ray_start_carries_the_token(prepared: dict[str, Any]) -> None:
    token_paths = set()
    for section in START_SECTIONS:
        starts = _ray_starts(prepared, section)
        assert starts, section
        for command in starts:
            assert re.search(r"\bRAY_AUTH_MODE=token\b", command), command
            token_path = re.search(r"\bRAY_AUTH_TOKEN_PATH=(\S+)", command)
            assert token_path, command
            token_paths.add(token_path.group(1).replace("$HOME", "~"))
    assert len(token_paths) == 1, token_paths
    (remote_token,) = token_paths
    # file_mounts go to the head and, from the head, to every worker the autoscaler launches.
    assert remote_token in prepared["file_mounts"]
    assert prepared["file_mounts"][remote_token].startswith("~/.ray/"), "token comes from the user's home"


def test_auth_is_never_disabled() -> None:
    text = CLUSTER_YAML.read_text()
    assert "RAY_AUTH_MODE=disabled" not in text
    assert not re.search(r"RAY_AUTH_TOKEN=\S", text), "a literal token must not be in the YAML"


def test_nothing_binds_all_interfaces(prepared: dict[str, Any]) -> None:
    commands = _all_commands(prepared)
    assert not [c for c in commands if "0.0.0.0" in c or "--host ::" in c]
    (head_start,) = _ray_starts(prepared, "head_start_ray_commands")
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "--dashboard-port=8265" in head_start, "`ray dashboard ray_cluster.yaml` forwards 8265"
    mlflow_host = re.search(r"--host (\$\([^)]*\)|\S+)", _mlflow_server(prepared))
    assert mlflow_host and mlflow_host.group(1) == "$(hostname -I | awk '{print $1}')", (
        "head's private address"
    )


def test_mlflow_runs_on_the_head_with_shared_artifacts(prepared: dict[str, Any]) -> None:
    server = _mlflow_server(prepared)
    port = re.search(r"--port (\d+)", server).group(1)
    assert re.search(r"--artifacts-destination s3://\S+", server)
    assert not [c for c in prepared["worker_start_ray_commands"] if MLFLOW_SERVER in c]
    for section in START_SECTIONS:
        (start,) = _ray_starts(prepared, section)
        assert re.search(rf"MLFLOW_TRACKING_URI=http://(\$\([^)]*\)|\S+):{port}\b", start), (
            f"{section} must point jobs at MLflow"
        )


def test_setup_installs_the_project_like_the_readme(prepared: dict[str, Any]) -> None:
    assert prepared["file_mounts"]["~/comic-reid"] == "."
    assert "cd ~/comic-reid && make venv" in prepared["setup_commands"]
    assert ".venv" in prepared["rsync_exclude"], "the laptop's venv must not be copied over the node's"
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^venv:", makefile, re.MULTILINE)
    assert re.search(r"pip install .*-e ", makefile), "make venv installs the project editable"
    for section in START_SECTIONS:
        for command in _ray_starts(prepared, section):
            assert "~/comic-reid/.venv/bin/ray start" in command, "nodes run the project's pinned Ray"


def test_mlflow_demands_the_credentials_every_node_has(prepared: dict[str, Any], tmp_path: Path) -> None:
    """The head's server is the local cluster's (MLflow's basic-auth app) with its flags as written here; its
    admin and every node's jobs get MLFLOW_TRACKING_USERNAME / _PASSWORD from one env file that file_mounts
    copies from the laptop, as it does the Ray token. No password is written in the YAML."""
    server = _mlflow_server(prepared)
    unit, module_args = server.split(MLFLOW_SERVER)
    assert "--property=EnvironmentFile=$HOME/.ray/comic-reid-mlflow.env" in unit
    concrete = module_args.replace("$(hostname -I | awk '{print $1}')", "10.0.0.1").replace("$HOME", "/home/u")
    args = build_parser().parse_args(shlex.split(concrete))
    assert args.root == "/home/u/mlflow" and args.port == 5000 and args.workers == 4
    command = MlflowServer(tmp_path, args.port, args.host, artifacts_destination=args.artifacts_destination,
                           workers=args.workers).command()
    assert command[1:4] == ["server", "--app-name", "basic-auth"]
    assert prepared["file_mounts"][MLFLOW_ENV_FILE] == MLFLOW_ENV_FILE
    assert any(MLFLOW_ENV_FILE in c and "chmod 600" in c for c in prepared["setup_commands"])
    for section in START_SECTIONS:
        (start,) = _ray_starts(prepared, section)
        assert start.startswith("set -a && . $HOME/.ray/comic-reid-mlflow.env && set +a &&"), start
    assert not [c for c in _all_commands(prepared) if re.search(r"MLFLOW_(TRACKING|AUTH_ADMIN)_PASSWORD=", c)]
