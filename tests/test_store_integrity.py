"""Nothing lost, nothing quietly wrong when writing a store: one writer at a time (real
processes, local disk and moto's S3), another source's visits only with --overwrite, OCT values
float16 cannot hold refused or rescaled, all-zero and boolean volumes refused by name, and a
fingerprint that changes with the split."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from data_prep.convert import HOLD_ENV, convert, convert_main
from data_prep.store_writer import lease_location
from data_prep.validate import validate_main
from fpn.data.store import open_store
from fpn.storage.lease import Lease, LeaseOwner, LeaseRecord, read_lease
from tests.test_convert import PATIENTS, SPLIT, write_reference_source

REPO = Path(__file__).resolve().parents[1]
OTHER_PATIENTS = {"Q01": [("OD", 0, True)], "Q02": [("OS", 0, True)], "Q03": [("OD", 0, True)]}
OTHER_SPLIT = {"train": ["Q01"], "val": ["Q02"], "test": ["Q03"]}


def _cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a Ray of its own
    env.update(PYTHONPATH=str(REPO), MLFLOW_DISABLE_TELEMETRY="true", **extra)
    return env


def _convert_cmd(src: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "data_prep", "convert", str(src), str(out), "--no-progress",
            "--num-cpus", "1", *extra]


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _debris(store: Path) -> list[str]:
    return sorted(n for n in os.listdir(store / "visits") if n.startswith("."))


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("integrity") / "source"
    write_reference_source(root, PATIENTS, SPLIT)
    return root


def test_two_concurrent_converts_one_is_refused_and_the_store_is_complete(source, tmp_path):
    """Two `python -m data_prep convert` processes on one store: the second is refused (exit 2,
    one line naming the first), and the first leaves a complete store. Before the lease both
    reported success and their clean-ups deleted each other's visits."""
    out, go = tmp_path / "store.zarr", tmp_path / "go"
    first = subprocess.Popen(_convert_cmd(source, out), env=_cli_env(**{HOLD_ENV: str(go)}),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not Path(lease_location(str(out))).exists():
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first convert never took the lease"
            time.sleep(0.1)
        second = subprocess.run(_convert_cmd(source, out), env=_cli_env(), capture_output=True,
                                text=True, timeout=300, check=False)
        assert second.returncode == 2, second.stderr
        refusal = _lines(second.stderr)
        assert len(refusal) == 1, refusal
        assert "store busy" in refusal[0] and f"pid {first.pid}" in refusal[0]
        assert str(out) in refusal[0] and "data_prep convert" in refusal[0]
    finally:
        go.touch()
        stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert f"{sum(map(len, PATIENTS.values()))} visit(s) written" in stdout
    store = open_store(str(out))
    assert len(store.visits) == sum(map(len, PATIENTS.values()))
    assert store.conversion == {"complete": True, "failed": []}
    assert _debris(out) == [] and read_lease(lease_location(str(out))) is None


def test_sigterm_releases_the_writer_lease(source, tmp_path):
    """A scheduler's SIGTERM unwinds the convert: the next run need not wait out the TTL."""
    import signal

    out = tmp_path / "store.zarr"
    held = subprocess.Popen(_convert_cmd(source, out),
                            env=_cli_env(**{HOLD_ENV: str(tmp_path / "never")}),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while read_lease(lease_location(str(out))) is None:
        assert held.poll() is None and time.monotonic() < deadline, held.communicate()
        time.sleep(0.1)
    held.send_signal(signal.SIGTERM)
    held.communicate(timeout=60)
    assert held.returncode == 128 + signal.SIGTERM
    assert read_lease(lease_location(str(out))) is None


def test_a_stale_writer_lease_is_taken_over_by_name(source, tmp_path, ray_local, capsys):
    """A convert killed with -9 leaves its lease; once its heartbeat is older than its TTL the
    next convert takes it over (atomically) and says whose it was."""
    out = tmp_path / "store.zarr"
    out.mkdir()
    dead = LeaseOwner("node7", 4242, "bob", "f" * 32, "data_prep convert /old /store")
    then = time.time() - 600
    lease_file = Path(lease_location(str(out)))
    lease_file.write_bytes(LeaseRecord(dead, then, then, 120.0).to_json())
    os.utime(lease_file, (then, then))
    assert convert_main([str(source), str(out), "--no-progress"]) == 0
    assert "took over the stale writer lease of bob@node7 pid 4242" in capsys.readouterr().err
    assert not lease_file.exists() and len(open_store(str(out)).visits) == 7


def test_convert_to_s3_is_refused_while_another_writer_holds_the_lease(source, s3_endpoint,
                                                                       capsys):
    options = {"endpoint_url": s3_endpoint, "key": "testing", "secret": "testing"}
    url = "s3://fpn-test/busy/store.zarr"
    with Lease(lease_location(url), ttl_s=60, storage_options=options,
               owner=LeaseOwner.current("the other convert")):
        argv = [str(source), url, "--no-progress"] + \
            [f"--storage-option={k}={v}" for k, v in options.items()]
        assert convert_main(argv) == 2
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and "store busy" in err[0] and "the other convert" in err[0]
    import s3fs

    fs = s3fs.S3FileSystem(**options)
    fs.invalidate_cache()
    assert not fs.exists("fpn-test/busy/store.zarr/zarr.json")  # nothing written


def test_another_source_needs_overwrite_and_says_what_it_removes(source, tmp_path, ray_local,
                                                                  capsys):
    out = tmp_path / "store.zarr"
    assert convert(str(source), str(out), progress=False).ok
    before = open_store(str(out))
    other = tmp_path / "other"
    write_reference_source(other, OTHER_PATIENTS, OTHER_SPLIT, seed=5)
    capsys.readouterr()

    assert convert_main([str(other), str(out), "--no-progress"]) == 2
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1, err
    assert "--overwrite" in err[0] and str(source.resolve()) in err[0]
    assert "would remove 7 (P01_OD_0, P01_OD_90" in err[0]
    after = open_store(str(out))
    assert after.fingerprint == before.fingerprint and after.visits == before.visits

    # the same data from another folder removes and replaces nothing: no refusal
    moved = tmp_path / "moved"
    shutil.copytree(source, moved)
    assert convert_main([str(moved), str(out), "--no-progress"]) == 0
    assert "0 visit(s) written, 7 unchanged" in capsys.readouterr().out

    assert convert_main([str(other), str(out), "--no-progress", "--overwrite"]) == 0
    captured = capsys.readouterr()
    assert ("--overwrite: removing 7 visit(s) from " f"{out}: P01_OD_0, P01_OD_90, P02_OS_0, "
            "P03_OD_0, P03_OS_0, P04_OD_0, P05_OD_0; replacing 0: -") in captured.err
    store = open_store(str(out))
    assert [v.key for v in store.visits] == ["Q01_OD_0", "Q02_OS_0", "Q03_OD_0"]
    assert sorted(os.listdir(out / "visits")) == ["Q01_OD_0", "Q02_OS_0", "Q03_OD_0", "zarr.json"]


def test_changed_files_of_another_source_count_as_replacements(source, tmp_path, ray_local,
                                                                capsys):
    out = tmp_path / "store.zarr"
    assert convert(str(source), str(out), progress=False).ok
    edited = tmp_path / "edited"
    shutil.copytree(source, edited)
    oct_file = edited / "P02_OS" / "0" / "bscan_flat.01.npy"
    np.save(oct_file, np.load(oct_file) * 2)
    assert convert_main([str(edited), str(out), "--no-progress"]) == 2
    assert "would remove 0 (-) and replace 1 (P02_OS_0)" in capsys.readouterr().err
    # the store's own source, edited: the store follows it and says so
    shutil.copytree(source, tmp_path / "own")
    assert convert_main([str(tmp_path / "own"), str(out), "--no-progress", "--overwrite"]) == 0
    np.save(tmp_path / "own" / "P02_OS" / "0" / "bscan_flat.01.npy", np.load(oct_file))
    capsys.readouterr()
    assert convert_main([str(tmp_path / "own"), str(out), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "the source changed since the last conversion: removing 0 visit(s)" in captured.err
    assert "replacing 1: P02_OS_0" in captured.err and "1 visit(s) written" in captured.out


def _oct_file(root: Path, key: str) -> Path:
    patient, eye, day = key.split("_")
    return next((root / f"{patient}_{eye}" / day).glob("bscan_flat.*.npy"))


def test_values_float16_cannot_hold_all_zero_and_boolean_volumes_are_refused_by_name(
        tmp_path, capsys):
    root = tmp_path / "source"
    write_reference_source(root, PATIENTS, SPLIT)
    shape = np.load(_oct_file(root, "P01_OD_0")).shape
    wide = np.random.default_rng(0).gamma(2.0, 40.0, shape).astype(np.float32)
    wide[0, 0, :3] = 1e-9  # 11 decades below the rest
    np.save(_oct_file(root, "P01_OD_0"), wide)
    np.save(_oct_file(root, "P02_OS_0"), np.zeros(shape, np.float32))
    np.save(_oct_file(root, "P03_OD_0"), np.random.default_rng(1).random(shape) > 0.5)
    out = tmp_path / "store.zarr"

    assert convert_main([str(root), str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    for key, cause in (("P01_OD_0", "3 of 16384 OCT voxels would underflow float16"),
                       ("P02_OS_0", "OCT is all zeros"),
                       ("P03_OD_0", "OCT holds only the values 0 and 1")):
        assert f"{_oct_file(root, key)} (visit {key}): {cause}" in err, err
    assert "--dtype float32" in err and not out.exists()
    assert validate_main([str(root), "--layout", "reference"]) == 1
    printed = capsys.readouterr().out
    assert printed.count("underflow") == 1 and "all zeros" in printed and "0 and 1" in printed
    assert validate_main([str(root), "--layout", "reference", "--dtype", "float32"]) == 1
    assert "underflow" not in capsys.readouterr().out  # float32 holds the range


def test_small_values_survive_float16_through_convert(tmp_path, ray_local):
    """A source in linear intensity (~1e-8): plain float16 lost a third of its voxels to zero."""
    root = tmp_path / "source"
    write_reference_source(root, {"P01": [("OD", 0, True)], "P02": [("OD", 0, True)],
                                  "P03": [("OD", 0, True)]},
                           {"train": ["P01"], "val": ["P02"], "test": ["P03"]})
    shape = np.load(_oct_file(root, "P01_OD_0")).shape
    tiny = np.random.default_rng(2).gamma(2.0, 2e-8, shape).astype(np.float32)
    np.save(_oct_file(root, "P01_OD_0"), tiny)
    out = tmp_path / "store.zarr"
    assert convert(str(root), str(out), progress=False).ok
    store = open_store(str(out))
    decoded = store.read("P01_OD_0", "oct")
    assert np.count_nonzero(decoded) == tiny.size
    np.testing.assert_allclose(decoded, tiny, rtol=2 ** -11)
    assert float(store.array("P01_OD_0", "oct").attrs["scale"]) < 1


def test_fingerprint_changes_when_the_split_changes(source, tmp_path, ray_local):
    root = tmp_path / "source"
    shutil.copytree(source, root)
    out = tmp_path / "store.zarr"
    first = convert(str(root), str(out), progress=False)
    moved = {**SPLIT, "val": [], "test": ["P02", "P03"]}  # P02: val -> test, same data
    (root / "split.json").write_text(json.dumps(moved))
    second = convert(str(root), str(out), progress=False)
    assert second.ok and second.written == [] and len(second.unchanged) == 7
    assert second.fingerprint != first.fingerprint
    store = open_store(str(out))
    assert store.split["test"] == ["P02", "P03"] and store.fingerprint == second.fingerprint
    (root / "split.json").write_text(json.dumps(SPLIT))
    assert convert(str(root), str(out), progress=False).fingerprint == first.fingerprint


def test_schemes_without_atomic_writes_convert_with_a_warning():
    from data_prep.convert import ConvertStats, _take_lease

    stats = ConvertStats(location="gs://bucket/store.zarr")
    assert _take_lease("gs://bucket/store.zarr", None, 60.0, "src", stats) is None
    assert len(stats.notes) == 1 and "no writer lease" in stats.notes[0]
    assert "make sure no other convert writes this store" in stats.notes[0]
    stats = ConvertStats(location="memory://x/store.zarr")  # one process: nothing to say
    assert _take_lease("memory://x/store.zarr", None, 60.0, "src", stats) is None
    assert stats.notes == []
