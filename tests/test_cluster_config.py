"""``cluster.yaml`` against Ray's own cluster-config validation, offline (no cloud calls).

Ray's autoscaler fills the config out with the provider's defaults and validates it against its
JSON schema and its own checks (``prepare_config`` + ``validate_config``, what ``ray up`` does
before it talks to AWS); then the properties this project relies on: GPU spot workers with
bounds, the driver resource on the on-demand head only, setup that installs this project, token
authentication, storage configured in one place, least-privilege instance profiles on every
node, SSH from one CIDR (Ray's own security-group code run against moto's EC2), MLflow behind
basic-auth with its stores backed up, and the head's MLflow commands run for real on 127.0.0.1.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from tests.processes import free_port

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"
CLUSTER_DOC = CLUSTER_YAML.parent / "docs" / "cluster.md"
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
    assert "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in mlflow  # no job runner on the head


def test_storage_is_configured_in_one_place(raw):
    # the file as written (prepare_config merges setup_commands into the head's and workers')
    setup = _commands(raw, "setup_commands")
    assert setup.count("s3://") == 1  # the bucket, once; everything else derives from it
    for derived in ("FPN_STORE=$FPN_BUCKET", "FPN_STORAGE=$FPN_BUCKET",
                    "FPN_MLFLOW_ARTIFACTS=$FPN_BUCKET", "FPN_MLFLOW_BACKUP=$FPN_BUCKET",
                    "MLFLOW_TRACKING_URI=http://"):
        assert derived in setup, derived
    others = _commands(raw, "head_setup_commands", "worker_setup_commands",
                       "head_start_ray_commands", "worker_start_ray_commands")
    assert "s3://" not in others


# -- security (issue 13) ------------------------------------------------------------------------

def _profile_name(node_type: dict) -> str:
    return node_type["node_config"]["IamInstanceProfile"]["Arn"].rsplit("/", 1)[-1]


def test_every_node_has_its_own_least_privilege_profile(prepared, monkeypatch):
    from ray.autoscaler._private.aws.config import DEFAULT_RAY_INSTANCE_PROFILE, _configure_iam_role

    types = prepared["available_node_types"]
    head = prepared["head_node_type"]
    names = {n: _profile_name(t) for n, t in types.items()}  # KeyError: a node without one
    assert names[head] not in (DEFAULT_RAY_INSTANCE_PROFILE, "ray-autoscaler-v1")
    assert all(names[n] != names[head] for n in types if n != head)  # workers: not the head's
    # Ray's bootstrap keeps a configured head profile and creates no role of its own: with AWS
    # out of reach (a closed local port), any IAM call would fail here
    for k, v in {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x",
                 "AWS_SECRET_ACCESS_KEY": "x", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(k, v)
    config = _configure_iam_role(copy.deepcopy(prepared))
    assert _profile_name(config["available_node_types"][head]) == names[head]
    # the profiles' permissions are written down next to the cluster file
    doc = CLUSTER_DOC.read_text()
    for name in set(names.values()):
        assert f"`{name}`" in doc, name
    assert '"iam:PassedToService": "ec2.amazonaws.com"' in doc
    assert '"ec2:InstanceMarketType": "spot"' in doc


def _ssh_rules(raw: dict) -> list[dict]:
    return raw["provider"]["security_group"]["IpPermissions"]


def test_ssh_is_open_to_one_cidr_set_in_one_place(raw):
    rules = _ssh_rules(raw)
    assert rules and all(r["IpProtocol"] == "tcp" and r["FromPort"] == r["ToPort"] == 22
                         for r in rules)
    cidrs = [ip["CidrIp"] for r in rules for ip in r.get("IpRanges", [])]
    assert len(cidrs) == 1 and cidrs[0] not in ("0.0.0.0/0",)
    assert not any(r.get("Ipv6Ranges") for r in rules)
    assert CLUSTER_YAML.read_text().count(cidrs[0]) == 1  # one place to edit


def _step_zero_script() -> str:
    """The security-group script of docs/cluster.md, step 0, as the reader runs it."""
    doc = CLUSTER_DOC.read_text()
    start = doc.index("python - <<'EOF'\n", doc.index("0. **Once per account")) + len("python - <<'EOF'\n")
    body = doc[start:doc.index("   EOF", start)]
    return "\n".join(line[3:] for line in body.splitlines())


def _open_to_world(group: dict) -> bool:
    return any(ip.get("CidrIp") == "0.0.0.0/0" for r in group["IpPermissions"]
               for ip in r.get("IpRanges", []))


@pytest.mark.parametrize("step_zero", [True, False], ids=["pre-created", "ray-default"])
def test_ray_leaves_the_pre_created_group_closed(prepared, monkeypatch, step_zero):
    """Ray's own security-group bootstrap against moto's EC2: with step 0 the nodes get the group
    that admits SSH from the CIDR only; without it, Ray's group is open to the world."""
    moto = pytest.importorskip("moto")
    import boto3
    from ray.autoscaler._private.aws.config import _configure_security_group, _configure_subnet
    from ray.autoscaler._private.aws.utils import resource_cache

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.chdir(CLUSTER_YAML.parent)
    resource_cache.cache_clear()
    with moto.mock_aws():
        if step_zero:
            # the documented script itself, as a reader pastes it
            exec(compile(_step_zero_script(), "docs/cluster.md step 0", "exec"), {})  # noqa: S102
        config = _configure_security_group(_configure_subnet(copy.deepcopy(prepared)))
        ids = {g for t in config["available_node_types"].values()
               for g in t["node_config"]["SecurityGroupIds"]}
        groups = boto3.client("ec2", region_name="us-east-1").describe_security_groups(
            GroupIds=sorted(ids))["SecurityGroups"]
    resource_cache.cache_clear()
    if not step_zero:
        assert any(_open_to_world(g) for g in groups)  # what step 0 prevents
        return
    assert len(groups) == 1 and groups[0]["GroupName"] == prepared["provider"]["security_group"][
        "GroupName"]
    group = groups[0]
    assert not _open_to_world(group)
    outside = [ip["CidrIp"] for r in group["IpPermissions"] for ip in r.get("IpRanges", [])]
    assert outside == [ip["CidrIp"] for r in _ssh_rules(prepared) for ip in r["IpRanges"]]
    assert any(p["GroupId"] == group["GroupId"] for r in group["IpPermissions"]
               for p in r.get("UserIdGroupPairs", []))  # node to node


def test_mlflow_is_behind_basic_auth_and_its_store_is_backed_up(prepared, raw):
    head_start = prepared["head_start_ray_commands"]
    server = next(i for i, c in enumerate(head_start) if "mlflow server" in c)
    cmd = head_start[server]
    assert "--app-name basic-auth" in cmd and "MLFLOW_AUTH_CONFIG_PATH=" in cmd
    assert 'MLFLOW_AUTH_ADMIN_PASSWORD="$(cat ~/.fpn/mlflow-admin)"' in cmd
    assert "MLFLOW_FLASK_SERVER_SECRET_KEY=" in cmd
    ini = _commands(raw, "head_setup_commands")
    assert "default_permission = READ" in ini and "basic_auth.db" in ini
    assert prepared["file_mounts"].get("~/.fpn/mlflow-admin") == "~/.fpn/mlflow-admin"
    restore = next(i for i, c in enumerate(head_start) if "mlflow_backup restore" in c)
    backup = next(i for i, c in enumerate(head_start) if "mlflow_backup backup --every" in c)
    assert restore < server  # the stores are back before the server opens them
    for c in (head_start[restore], head_start[backup]):
        assert "mlflow.db" in c and "basic_auth.db" in c and "$FPN_MLFLOW_BACKUP" in c
    setup = _commands(raw, "setup_commands")
    assert "MLFLOW_TRACKING_USERNAME=admin" in setup
    assert "MLFLOW_TRACKING_PASSWORD=\"$(cat ~/.fpn/mlflow-admin)\"" in setup


def test_spot_runs_tolerate_several_reclaims():
    """The commands the docs give for spot runs allow more than one restart."""
    import re as re_

    doc = CLUSTER_DOC.read_text()
    flags = [int(v) for v in re_.findall(r"--max-failures (-?\d+)", doc)]
    sets = [int(v) for v in re_.findall(r"--set max_failures=(-?\d+)", doc)]
    assert flags and sets
    assert all(v >= 3 or v == -1 for v in flags + sets), (flags, sets)
    assert "spot/instance-action" in doc  # the termination-notice design


# -- the head's MLflow commands, run for real on 127.0.0.1 ----------------------------------------

def _wait_http(url: str, timeout: float = 180) -> None:
    import time
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            assert time.monotonic() < deadline, f"{url} did not answer in {timeout} s"
            time.sleep(1)


def _stop_group(pid_file: Path) -> None:
    import os
    import signal
    import time

    if not pid_file.is_file():
        return
    pgid = int(pid_file.read_text())
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(60):
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    os.killpg(pgid, signal.SIGKILL)


def _group_commands(pid_file: Path) -> list[str]:
    """The command lines of the processes in the process group recorded in ``pid_file``."""
    import os

    pgid, out = int(pid_file.read_text()), []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.getpgid(int(pid)) == pgid:
                out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, ProcessLookupError):
            continue
    return out


def _run_head(raw: dict, home: Path, bucket: Path, port: int) -> None:
    """cluster.yaml's fpn.env, head setup and head start commands (all but Ray's own) in
    ``home``, with the bucket a local folder and MLflow on 127.0.0.1:port."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HOME": str(home), "RAY_HEAD_IP": "127.0.0.1",
           "PYTHONPATH": os.pathsep.join(sys.path), "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    fpn_env = raw["setup_commands"][0].replace("s3://my-fpn-bucket", bucket.as_uri())
    fpn_env = fpn_env.replace("FPN_MLFLOW_PORT=5000", f"FPN_MLFLOW_PORT={port}")
    head = [c for c in raw["head_start_ray_commands"] if "ray st" not in c]
    setup = [c for c in raw["head_setup_commands"] if "pip install" not in c]  # installed here
    for cmd in [fpn_env, *setup, *head]:
        done = subprocess.run(["bash", "-c", cmd], env=env, cwd=home, capture_output=True,
                              text=True, timeout=300, check=False)
        assert done.returncode == 0, f"{cmd}\n{done.stderr[-2000:]}"


@pytest.mark.slow
def test_head_mlflow_needs_a_login_and_outlives_the_head(raw, tmp_path, monkeypatch):
    """Two heads in a row (a `ray down` between them) sharing one bucket: the server refuses
    anonymous requests and lets a reader only read; the second head has the first one's
    registry and users back."""
    pytest.importorskip("flask_wtf", reason="MLflow's basic-auth app needs mlflow[auth]")
    import secrets
    import urllib.error
    import urllib.request

    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.client import AuthServiceClient
    from mlflow.tracking import MlflowClient

    bucket = tmp_path / "bucket"
    password = secrets.token_urlsafe(16)
    homes = [tmp_path / "head1", tmp_path / "head2"]
    for home in homes:  # file_mounts put your ~/.fpn/mlflow-admin on each head
        (home / ".fpn").mkdir(parents=True)
        (home / ".fpn" / "mlflow-admin").write_text(password + "\n")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    try:
        _run_head(raw, homes[0], bucket, port)
        _wait_http(f"{uri}/health")
        # the server and its one worker, without MLflow's job runner and its huey consumers
        server = _group_commands(homes[0] / "mlflow" / "server.pid")
        assert any("mlflow" in c for c in server), server
        assert not any("huey" in c or "_job_runner" in c for c in server), server
        with pytest.raises(urllib.error.HTTPError) as anonymous:
            urllib.request.urlopen(f"{uri}/api/2.0/mlflow/registered-models/search", timeout=30)
        assert anonymous.value.code == 401
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        MlflowClient(uri, registry_uri=uri).create_registered_model("ga-fpn", tags={"k": "v"})
        AuthServiceClient(uri).create_user("reader", "reader-password-1")
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "reader")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "reader-password-1")
        reader = MlflowClient(uri, registry_uri=uri)
        assert reader.get_registered_model("ga-fpn").tags["k"] == "v"
        with pytest.raises(MlflowException, match="PERMISSION_DENIED|Permission denied"):
            reader.set_registered_model_tag("ga-fpn", "k", "moved")
    finally:
        _stop_group(homes[0] / "mlflow" / "backup.pid")  # SIGTERM: one last backup
        _stop_group(homes[0] / "mlflow" / "server.pid")
    assert (bucket / "mlflow-db" / "mlflow.db").is_file()
    assert (bucket / "mlflow-db" / "basic_auth.db").is_file()
    try:  # a new head: empty disk, the same bucket and admin password
        _run_head(raw, homes[1], bucket, port)
        _wait_http(f"{uri}/health")
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "reader")  # the restored user store
        assert MlflowClient(uri, registry_uri=uri).get_registered_model("ga-fpn").tags["k"] == "v"
    finally:
        _stop_group(homes[1] / "mlflow" / "backup.pid")
        _stop_group(homes[1] / "mlflow" / "server.pid")
