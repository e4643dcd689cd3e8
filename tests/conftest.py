"""Shared fixtures: a local Ray instance and a tiny synthetic store on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

SYNTHETIC_SHAPE = (8, 64, 32)  # (S, D, W): tiny, so the whole suite stays fast


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray instance with 2 CPUs, started once for the session (reused if already up)."""
    import ray

    started = False
    if not ray.is_initialized():
        # with the dashboard: it serves the state API that Ray Train polls
        ray.init(address="local", num_cpus=2, log_to_driver=False)
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
