"""Shared fixtures: a local Ray instance, a tiny synthetic store on disk and an S3 endpoint
(moto's server on 127.0.0.1)."""

from __future__ import annotations

from pathlib import Path

import pytest

#: the modules that take minutes, longest first: the suite runs on two pytest-xdist workers, a
#: module at a time each (``--dist loadfile``, pyproject.toml), and starting the long ones first
#: keeps one worker from being left with a long module at the end
LONG_MODULES = ("test_search.py", "test_device_check.py", "test_local_cluster.py",
                "test_training.py", "test_spot_interruption.py", "test_drills.py",
                "test_ray_connect.py", "test_experiments.py", "test_cluster_config.py",
                "test_object_storage.py", "test_run_identity.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONG_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept


SYNTHETIC_SHAPE = (8, 64, 32)  # (S, D, W): tiny, so the whole suite stays fast
#: the bucket of :func:`s3_endpoint`
S3_BUCKET = "fpn-test"


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray instance with 2 CPUs, started once for the session (reused if already up)."""
    import ray

    from fpn.training.ray_connect import connect_ray

    started = False
    if not ray.is_initialized():
        # with the dashboard: it serves the state API that Ray Train polls
        with pytest.MonkeyPatch.context() as mp:
            mp.delenv("RAY_ADDRESS", raising=False)  # the tests' own instance, always
            connect_ray(num_cpus=2, log_to_driver=False)
        started = True
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def synthetic_source(tmp_path_factory) -> Path:
    """A tiny synthetic source in the reference layout (4 labelled + 2 unlabelled patients)."""
    from data_prep.synthetic import make_synthetic_dataset

    out = tmp_path_factory.mktemp("synthetic") / "source"
    make_synthetic_dataset(out, patients=4, unlabelled=2, shape=SYNTHETIC_SHAPE, visits=2, seed=0)
    return out


@pytest.fixture(scope="session")
def synthetic_store(synthetic_source, tmp_path_factory, ray_local) -> Path:
    """The synthetic source converted to a float16 fpn store; open it with ``open_store(path)``."""
    from data_prep.convert import convert

    out = tmp_path_factory.mktemp("store") / "store.zarr"
    stats = convert(str(synthetic_source), str(out), progress=False)
    assert stats.ok, stats.summary_line()
    return out


def forget_s3_clients() -> None:
    """Drop fsspec's cached S3 filesystems: their key is the constructor's arguments, not the
    environment's endpoint, so one made for an earlier module's moto server (another port)
    would otherwise be handed to the next module."""
    try:
        import s3fs
    except ImportError:
        return
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 with one bucket (:data:`S3_BUCKET`); the process
    environment points boto3, s3fs and pyarrow at it (and nowhere else) for the module."""
    pytest.importorskip("s3fs", reason="s3fs is in the 'cloud' extra")
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is in the 'dev' extra")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",  # never ask an instance-metadata service
        "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1",
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        import boto3

        boto3.client("s3").create_bucket(Bucket=S3_BUCKET)
        forget_s3_clients()
        yield endpoint
    server.stop()
    forget_s3_clients()
