"""``cluster.yaml`` against Ray's own cluster-config validation, offline (no cloud calls).

Ray's autoscaler fills the config out with the provider's defaults and validates it against its
JSON schema and its own checks (``prepare_config`` + ``validate_config``, what ``ray up`` does
before it talks to AWS); then the properties this project relies on: GPU spot workers with
bounds, the driver resource on the on-demand head only, setup that installs this project, token
authentication, and storage configured in one place.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"
DRIVER_RESOURCE = "fpn_driver"


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def prepared(raw) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    return config


def _commands(config: dict, *keys: str) -> str:
    return "\n".join(c for k in keys for c in config.get(k, []))


def test_ray_accepts_the_config(prepared):
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_ray_rejects_a_broken_variant(raw):
    """The validation is real: the same config with a wrong field fails it."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = copy.deepcopy(raw)
    broken["available_node_types"]["gpu_1x"]["min_workers"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def test_workers_are_gpu_spot_nodes_with_bounds(prepared):
    head = prepared["head_node_type"]
    workers = {n: t for n, t in prepared["available_node_types"].items() if n != head}
    assert len(workers) >= 2
    gpus = {n: t["resources"].get("GPU", 0) for n, t in workers.items()}
    assert all(g >= 1 for g in gpus.values()) and {1, 4} <= set(gpus.values())
    for name, node_type in workers.items():
        assert node_type["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot", name
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"], name
        assert DRIVER_RESOURCE not in node_type["resources"], name
    assert sum(t["max_workers"] for t in workers.values()) <= prepared["max_workers"]
    assert prepared["idle_timeout_minutes"] > 0


def test_head_is_on_demand_and_carries_the_driver_resource(prepared):
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert head["resources"].get(DRIVER_RESOURCE, 0) >= 1
    assert "InstanceMarketOptions" not in head["node_config"]
    assert head["resources"].get("GPU", 0) == 0


def test_image_matches_the_pinned_ray_and_python(prepared):
    import ray

    docker = prepared["docker"]
    for image in (docker["image"], docker.get("head_image", docker["image"])):
        assert image.startswith(f"rayproject/ray:{ray.__version__}-py311"), image
    assert "gpu" in docker["image"] and "ray-ml" not in docker["image"]


def test_setup_installs_this_project_from_the_synced_tree(prepared):
    assert prepared["file_mounts"].get("~/fpn") == "."
    setup = _commands(prepared, "setup_commands")
    assert re.search(r"pip install .*-e .*fpn\[cloud\]", setup)


def test_token_auth_and_private_services(prepared):
    starts = _commands(prepared, "head_start_ray_commands", "worker_start_ray_commands")
    for cmd in prepared["head_start_ray_commands"] + prepared["worker_start_ray_commands"]:
        if "ray start" in cmd:
            assert "RAY_AUTH_MODE=token" in cmd, cmd
    assert "~/.ray/auth_token" in prepared["file_mounts"]
    assert "--dashboard-host=127.0.0.1" in starts
    mlflow = next(c for c in prepared["head_start_ray_commands"] if "mlflow server" in c)
    assert '--host "$FPN_HEAD_IP"' in mlflow and "0.0.0.0" not in mlflow
    assert "--artifacts-destination" in mlflow and "sqlite:///" in mlflow


def test_storage_is_configured_in_one_place(raw):
    # the file as written (prepare_config merges setup_commands into the head's and workers')
    setup = _commands(raw, "setup_commands")
    assert setup.count("s3://") == 1  # the bucket, once; everything else derives from it
    for derived in ("FPN_STORE=$FPN_BUCKET", "FPN_STORAGE=$FPN_BUCKET",
                    "FPN_MLFLOW_ARTIFACTS=$FPN_BUCKET", "MLFLOW_TRACKING_URI=http://"):
        assert derived in setup, derived
    others = _commands(raw, "head_setup_commands", "worker_setup_commands",
                       "head_start_ray_commands", "worker_start_ray_commands")
    assert "s3://" not in others
