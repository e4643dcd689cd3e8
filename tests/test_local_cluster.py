"""docs/cluster.md's command sequence, run as a user would, on a Ray cluster on this machine.

A real multi-node Ray cluster on 127.0.0.1 (``ray start --head`` with the driver resource, plus a
``ray start --address`` worker node with CPUs of its own, each on unique ports with a temp dir of
its own), a local S3 endpoint (moto's server) holding the store, the Ray storage and the MLflow
artifacts, and an ``mlflow server`` process (sqlite backend, ``--artifacts-destination s3://``).
The cluster's processes get their environment the way ``cluster.yaml`` gives it to them: the
variables of ``~/fpn.env`` (``FPN_STORE``, ``FPN_TUNE_STORAGE``, ``MLFLOW_TRACKING_URI``, ...)
in the environment of ``ray start``, plus, for an S3 endpoint that is not AWS, ``AWS_ENDPOINT_URL``
and credentials (docs/cluster.md, "Where everything lives"). ``~`` of the cluster's nodes holds
the project at ``~/fpn``, as ``cluster.yaml``'s ``file_mounts`` put it there.

Then, with ``RAY_ADDRESS`` pointing at the head's job API: ``ray job submit`` of ``python -m
data_prep convert SRC $FPN_STORE`` and of ``data_prep summary``; ``ray job submit`` of a small
``tune/search.py`` on ``$FPN_STORE`` with ``--storage $FPN_TUNE_STORAGE`` and the MLflow server;
then on "your machine" (this process's environment): ``python -m fpn registry list``, ``mlflow
artifacts download`` and ``python -m fpn predict --model models:/ga-fpn@champion``.

Ray has no "stop this cluster only" (``ray stop`` stops every Ray on the machine, other people's
too), so the processes are ended by id: every process whose command line names this cluster's
temp dir or that lives in the sessions the ``ray start`` commands were started in, and their
descendants (the jobs' entrypoints).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("s3fs", reason="s3fs is in the 'cloud' extra")
moto_server = pytest.importorskip("moto.server", reason="moto[server] is in the 'dev' extra")

from tests.conftest import forget_s3_clients
from tests.processes import end_cluster, free_port

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "fpn-cluster"
SHAPE = ("8", "64", "32")  # (S, D, W): tiny volumes; the test is about the path, not learning
#: the smallest training settings that keep a 2-epoch trial within a few minutes on 2 cores
TINY_TRAIN = ("data.crop=[8,32]", "data.multiplier=1", "batch_size=4", "keep_best=1",
              "overlay_every=0")


# -- helpers ------------------------------------------------------------------------------------

def _run(cmd: list[str] | str, env: dict[str, str], cwd: Path, timeout: float,
         what: str) -> str:
    """Run a command as a user would in a shell; fail with its output when it fails."""
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, check=False, shell=isinstance(cmd, str))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{what} exited {proc.returncode}:\n{out[-6000:]}"
    return out


# -- the cluster --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory):
    """moto S3 + ``mlflow server`` + a two-node ``ray start`` cluster, all on 127.0.0.1; ended
    (by process id) whatever happens."""
    import logging

    import boto3

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server: one line a request
    tmp = tmp_path_factory.mktemp("cluster")
    # short: Ray's unix sockets live under it (path length limit)
    ray_tmp = tempfile.mkdtemp(prefix="fpnray", dir="/tmp")
    home = tmp / "home"  # the nodes' ~ ; cluster.yaml syncs the project to ~/fpn
    home.mkdir()
    (home / "fpn").symlink_to(ROOT, target_is_directory=True)

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    s3 = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true", "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1",
    }
    mlflow_port = free_port()
    bucket = f"s3://{BUCKET}"
    # what ~/fpn.env holds on every node (cluster.yaml), here with the head on 127.0.0.1
    fpn_env = {
        "FPN_BUCKET": bucket, "FPN_STORE": f"{bucket}/store.zarr", "FPN_STORAGE": f"{bucket}/runs",
        "FPN_TUNE_STORAGE": f"{bucket}/tune", "FPN_MLFLOW_ARTIFACTS": f"{bucket}/mlflow",
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
    }
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_", "FPN_"))
            and k not in ("MLFLOW_TRACKING_URI", "PYTHONPATH")}
    base.update({"PYTHONPATH": str(ROOT), "MLFLOW_DISABLE_TELEMETRY": "true",
                 "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"})
    node_env = {**base, **s3, **fpn_env, "HOME": str(home)}
    sessions: set[int] = set()
    mlflow_proc = None
    log = open(tmp / "mlflow-server.log", "w")  # noqa: SIM115 -- closed in the teardown
    try:
        with pytest.MonkeyPatch.context() as mp:
            for k, v in s3.items():
                mp.setenv(k, v)
            boto3.client("s3").create_bucket(Bucket=BUCKET)

        # the tracking server, as cluster.yaml's head starts it: sqlite on the head's disk,
        # artifacts proxied to the bucket, no job runner
        mlflow_proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
             "--port", str(mlflow_port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}",
             "--artifacts-destination", fpn_env["FPN_MLFLOW_ARTIFACTS"]],
            env={**node_env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, cwd=tmp, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)

        common = ["--node-ip-address=127.0.0.1", f"--temp-dir={ray_tmp}",
                  "--min-worker-port=0", "--max-worker-port=0", "--disable-usage-stats"]

        def node_ports() -> list[str]:  # every port a node binds, its own and unique
            return [f"--node-manager-port={free_port()}",
                    f"--object-manager-port={free_port()}",
                    f"--dashboard-agent-listen-port={free_port()}",
                    f"--dashboard-agent-grpc-port={free_port()}",
                    f"--runtime-env-agent-port={free_port()}",
                    f"--metrics-export-port={free_port()}"]

        def ray_start(make_args, what: str, attempts: int = 3) -> None:
            """``ray start``; again on fresh ports when it fails (it gives a node 30 s to
            register, which a loaded machine can miss), its leftovers ended first."""
            for attempt in range(1, attempts + 1):
                proc = subprocess.Popen(["ray", "start", *make_args()], env=node_env, cwd=home,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, start_new_session=True)
                sessions.add(proc.pid)
                out, _ = proc.communicate(timeout=180)
                if proc.returncode == 0:
                    return
                assert attempt < attempts, f"{what} failed {attempts} times:\n{out[-4000:]}"
                end_cluster("\0", {proc.pid})

        ports: dict[str, int] = {}

        def head_args() -> list[str]:  # drivers only: the driver resource, 1 CPU
            ports.update(gcs=free_port(), dashboard=free_port())
            return ["--head", f"--port={ports['gcs']}", f"--dashboard-port={ports['dashboard']}",
                    "--dashboard-host=127.0.0.1", f"--ray-client-server-port={free_port()}",
                    "--num-cpus=1", '--resources={"fpn_driver": 100}', *common, *node_ports()]

        def worker_args() -> list[str]:  # CPUs of its own, for the Train workers (GPU nodes')
            return [f"--address=127.0.0.1:{ports['gcs']}", "--num-cpus=2",
                    '--resources={"fpn_worker_node": 1}', *common, *node_ports()]

        ray_start(head_args, "ray start --head")
        ray_start(worker_args, "ray start --address")
        dashboard = ports["dashboard"]

        deadline = time.monotonic() + 120
        health = f"http://127.0.0.1:{mlflow_port}/health"
        while True:
            try:
                with urllib.request.urlopen(health, timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert mlflow_proc.poll() is None, (tmp / "mlflow-server.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "mlflow server did not answer within 120 s"
            time.sleep(1)

        # "your machine": the job API through the (here: local) dashboard port, the tracking
        # server through its forwarded port, S3 credentials for pulling data and predictions
        user_env = {**base, **s3, "RAY_ADDRESS": f"http://127.0.0.1:{dashboard}",
                    "MLFLOW_TRACKING_URI": fpn_env["MLFLOW_TRACKING_URI"]}
        yield {"tmp": tmp, "home": home, "user_env": user_env, "fpn_env": fpn_env, "s3": s3,
               "dashboard": user_env["RAY_ADDRESS"]}
    finally:
        if mlflow_proc is not None:  # the server and its workers: its own process group
            for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
                try:
                    os.killpg(mlflow_proc.pid, sig)
                    mlflow_proc.wait(timeout=wait_s)
                    break
                except ProcessLookupError:
                    break
                except subprocess.TimeoutExpired:
                    continue
        log.close()
        left = end_cluster(ray_tmp, sessions)
        server.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)
        assert not left, f"cluster processes left running: {left}"


def _submit(cluster: dict, job_id: str, shell: str, timeout: float) -> str:
    """``ray job submit -- bash -c '...'`` (docs/cluster.md), then the job's final status."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    cmd = f"ray job submit --submission-id {job_id} -- bash -c {shlex.quote(shell)}"
    proc = subprocess.run(cmd, shell=True, env=cluster["user_env"], cwd=cluster["tmp"],
                          capture_output=True, text=True, timeout=timeout, check=False)
    out = proc.stdout + proc.stderr
    status = JobSubmissionClient(cluster["dashboard"]).get_job_status(job_id)
    assert status == JobStatus.SUCCEEDED and proc.returncode == 0, (
        f"{job_id}: {status}, exit {proc.returncode}:\n{out[-8000:]}")
    return out


# -- the sequence -------------------------------------------------------------------------------

#: what the sequence below submits, as docs/cluster.md writes it (the test adds a tiny search's
#: flags, a temp source folder for /mnt/fpn-source and a temp --workdir)
DOCS_COMMANDS = (
    "ray job submit -- bash -c 'python -m data_prep convert /mnt/fpn-source $FPN_STORE'",
    "ray job submit -- bash -c 'python -m data_prep summary $FPN_STORE'",
    ("ray job submit -- bash -c 'cd ~/fpn && python tune/search.py --data $FPN_STORE \\\n"
     "     --storage $FPN_TUNE_STORAGE --mlflow $MLFLOW_TRACKING_URI --workdir ~/fpn-search"),
    "python -m fpn registry list ga-fpn",
    "mlflow artifacts download -u 'models:/ga-fpn@champion' -d ./champion",
    "python -m fpn predict --model 'models:/ga-fpn@champion' --data",
)


@pytest.mark.parametrize("command", DOCS_COMMANDS)
def test_docs_give_the_commands_the_sequence_runs(command):
    """docs/cluster.md and the sequence below agree (a cheap check, no cluster)."""
    assert command in (ROOT / "docs" / "cluster.md").read_text()


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_docs_cluster_sequence(local_cluster, monkeypatch):
    import s3fs
    from mlflow.tracking import MlflowClient
    from ray.util.state import list_nodes

    c = local_cluster
    tmp, env, fpn_env = c["tmp"], c["user_env"], c["fpn_env"]
    for k, v in c["s3"].items():  # this process reads the bucket as "your machine" does
        monkeypatch.setenv(k, v)
    nodes = [n for n in list_nodes(address=c["dashboard"]) if n.state == "ALIVE"]
    assert len(nodes) == 2, nodes
    assert sum("fpn_driver" in n.resources_total for n in nodes) == 1  # on the head only

    timings = {}
    t0 = time.monotonic()
    # the raw export, on a path every node sees (one machine here; EFS/FSx on AWS)
    source = tmp / "fpn-source"
    _run([sys.executable, "-m", "data_prep", "synth", str(source), "--patients", "5",
          "--unlabelled", "0", "--shape", *SHAPE, "--visits", "1"], env, tmp, 120, "synth")

    # step 3: convert on the cluster, straight into the bucket
    _submit(c, "fpn-convert", f"python -m data_prep convert {source} $FPN_STORE", 600)
    summary = _submit(c, "fpn-summary", "python -m data_prep summary $FPN_STORE", 300)
    assert "visits" in summary, summary[-3000:]
    timings["convert"] = time.monotonic() - t0

    # step 4: the search (tiny), its drivers on the head, its Train workers on the worker node;
    # one trial: the path through the bucket is the point (tests/test_search.py has ASHA's
    # choice between trials)
    t1 = time.monotonic()
    work = tmp / "fpn-search"
    sets = " ".join(f"--set {s}" for s in TINY_TRAIN)
    search = (f"cd ~/fpn && python tune/search.py --data $FPN_STORE "
              f"--storage $FPN_TUNE_STORAGE --mlflow $MLFLOW_TRACKING_URI --workdir {work} "
              f"--cpus-per-worker 1 --ssl none --ratios 1.0 --trials 1 --epochs 2 {sets}")
    out = _submit(c, "fpn-search", search, 900)
    timings["search"] = time.monotonic() - t1
    assert "registered ga-fpn version" in out, out[-4000:]

    # what the bucket holds: the store, the Ray storage (Tune + Train), the MLflow artifacts
    from fpn.data.store import open_store

    forget_s3_clients()  # one cached for an earlier module's moto server would ask its old port
    fs = s3fs.S3FileSystem()
    fs.invalidate_cache()
    assert fs.isfile(f"{BUCKET}/store.zarr/zarr.json")
    assert fs.glob(f"{BUCKET}/tune/trials/*/epoch_*/model.pt"), fs.find(f"{BUCKET}/tune")[:50]
    assert fs.glob(f"{BUCKET}/tune/ga-fpn-none-*-r1/*")  # Tune's experiment state (keyed by the store)
    assert fs.find(f"{BUCKET}/mlflow"), "no MLflow artifact in the bucket"
    store = open_store(fpn_env["FPN_STORE"])
    test_visits = store.visits_for(splits="test")

    # step 5 on "your machine": the registry, the champion's files, predictions
    t2 = time.monotonic()
    listing = _run([sys.executable, "-m", "fpn", "registry", "list", "ga-fpn"], env, tmp, 120,
                   "registry list")
    assert "champion" in listing, listing
    client = MlflowClient(fpn_env["MLFLOW_TRACKING_URI"])
    versions = client.search_model_versions("name='ga-fpn'")
    assert len(versions) == 1, versions
    v = versions[0]
    assert v.tags["ratio"] == "1" and v.tags["ssl"] == "none"
    assert v.tags["store_fingerprint"] == store.fingerprint
    assert v.tags["test_split"] == "test" and v.tags["study"] == f"ga-fpn-none-{store.fingerprint[:8]}-r1"
    for tag in ("val_dice", "test_dice"):
        assert 0.0 <= float(v.tags[tag]) <= 1.0, (tag, v.tags[tag])
    for tag in ("trial", "test_keys_sha", "mlflow_run_id", "git_revision"):
        assert v.tags.get(tag), tag
    assert client.get_registered_model("ga-fpn").aliases.get("champion") == v.version
    assert v.version in listing

    champion = tmp / "champion"
    _run(["mlflow", "artifacts", "download", "-u", "models:/ga-fpn@champion", "-d",
          str(champion)], env, tmp, 300, "mlflow artifacts download")
    assert any(champion.rglob("*.pt")), sorted(str(p) for p in champion.rglob("*"))

    masks = tmp / "masks"
    _run([sys.executable, "-m", "fpn", "predict", "--model", "models:/ga-fpn@champion",
          "--data", fpn_env["FPN_STORE"], "--out", str(masks)], env, tmp, 300, "predict")
    assert test_visits
    for info in test_visits:
        from PIL import Image

        s, _, w = store.read(info.key, "oct").shape
        mask = np.asarray(Image.open(masks / f"{info.key}_mask.png"))
        assert mask.shape == (s, w) and set(np.unique(mask)) <= {0, 255}
        assert np.load(masks / f"{info.key}_prob.npy").shape == (s, w)
    assert (masks / "areas.csv").read_text().count("\n") == 1 + len(test_visits)
    timings["pull_and_predict"] = time.monotonic() - t2
    print(json.dumps({k: round(t, 1) for k, t in timings.items()}))
