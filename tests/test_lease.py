"""The lease (fpn.storage.lease) on local disk and on moto's S3 server: one holder at a time, a
heartbeat that keeps it, atomic takeover of a stale one, release that never deletes another's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fpn.storage.lease import Lease, LeaseHeld, LeaseLost, LeaseOwner, LeaseRecord, read_lease

REPO = Path(__file__).resolve().parents[1]


def _dead_holder(location: str, age_s: float, ttl_s: float = 1.0, **options) -> LeaseOwner:
    """Write the lease a crashed holder leaves behind: its heartbeat stopped ``age_s`` ago."""
    owner = LeaseOwner("elsewhere", 999_999, "bob", "deadbeef" * 4, "python -m data_prep convert")
    then = time.time() - age_s
    record = LeaseRecord(owner, then - 5, then, ttl_s)
    if "://" in location:
        import s3fs

        s3fs.S3FileSystem(**options).pipe_file(location, record.to_json())
    else:
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        Path(location).write_bytes(record.to_json())
        os.utime(location, (then, then))
    return owner


@pytest.fixture(params=["local", "s3"])
def where(request, tmp_path):
    """A lease location and its storage options, on local disk and on moto's S3 server."""
    if request.param == "local":
        return str(tmp_path / "store.zarr" / "writer.lease"), None
    endpoint = request.getfixturevalue("s3_endpoint")
    options = {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
    return f"s3://fpn-test/{tmp_path.name}/writer.lease", options


def test_one_holder_refuses_the_next_naming_itself(where):
    location, options = where
    first = Lease(location, ttl_s=30, storage_options=options,
                  owner=LeaseOwner.current("convert A"))
    with first:
        record = read_lease(location, options)
        assert record is not None and record.owner == first.owner
        second = Lease(location, ttl_s=30, storage_options=options)
        with pytest.raises(LeaseHeld) as held:
            second.acquire()
        message = str(held.value)
        assert "\n" not in message and location in message
        assert f"pid {os.getpid()}" in message and "convert A" in message
        assert held.value.holder.owner.token == first.owner.token
        assert second.try_acquire() is False and not second.held
        first.check()
    assert read_lease(location, options) is None  # released on exit
    with Lease(location, ttl_s=30, storage_options=options) as again:
        assert again.held


def test_heartbeat_keeps_a_live_holder_beyond_the_ttl(where):
    location, options = where
    with Lease(location, ttl_s=0.8, heartbeat_s=0.1, storage_options=options) as holder:
        time.sleep(1.6)  # twice the TTL
        assert not read_lease(location, options).stale()
        assert Lease(location, ttl_s=0.8, storage_options=options).try_acquire() is False
        holder.check()


def test_stale_lease_is_taken_over_and_the_old_holder_learns_it(where):
    location, options = where
    dead = _dead_holder(location, age_s=10, **(options or {}))
    taker = Lease(location, ttl_s=30, storage_options=options)
    assert taker.try_acquire()
    assert taker.took_over is not None and taker.took_over.owner == dead
    assert read_lease(location, options).owner == taker.owner

    # a holder that stalled past its TTL (here: its heartbeat thread stopped) loses it
    taker.release()
    stalled = Lease(location, ttl_s=0.5, heartbeat_s=0.4, storage_options=options).acquire()
    stalled._stop.set()  # what a frozen process looks like from outside
    time.sleep(0.8)
    newcomer = Lease(location, ttl_s=30, storage_options=options).acquire()
    with pytest.raises(LeaseLost, match="now held by"):
        stalled.heartbeat()  # its write is conditional on what it last wrote: refused
    with pytest.raises(LeaseLost, match="now held by"):
        stalled.check()
    stalled.release()  # must not delete the newcomer's lease
    assert read_lease(location, options).owner == newcomer.owner
    newcomer.release()
    assert read_lease(location, options) is None


def test_takeover_is_conditional_on_what_was_read(where):
    """Two contenders read the same stale lease; the first replacement wins, the second (based
    on the now outdated read) fails instead of overwriting it."""
    from fpn.storage.lease import _backend

    location, options = where
    _dead_holder(location, age_s=10, **(options or {}))
    first, second = _backend(location, options), _backend(location, options)
    (stale, version), (_, same_version) = first.read(), second.read()
    now = time.time()
    mine = LeaseRecord(LeaseOwner.current("first"), now, now, 30.0)
    theirs = LeaseRecord(LeaseOwner.current("second"), now, now, 30.0)
    assert first.replace(version, mine) is True
    assert second.replace(same_version, theirs) is False
    assert second.delete(same_version, stale.owner.token) is False
    assert read_lease(location, options).owner == mine.owner


def test_a_fresh_lease_is_never_taken_over(where):
    location, options = where
    _dead_holder(location, age_s=0.0, ttl_s=60, **(options or {}))
    with pytest.raises(LeaseHeld, match="bob@elsewhere pid 999999"):
        Lease(location, storage_options=options).acquire()


def test_moto_honours_conditional_puts(s3_endpoint):
    """The S3 protocol rests on If-None-Match / If-Match; check the server in use enforces them."""
    import boto3
    from botocore.exceptions import ClientError

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    etag = s3.put_object(Bucket="fpn-test", Key="cond", Body=b"1", IfNoneMatch="*")["ETag"]
    for kwargs in ({"IfNoneMatch": "*"}, {"IfMatch": '"0123"'}):
        with pytest.raises(ClientError, match="PreconditionFailed|412"):
            s3.put_object(Bucket="fpn-test", Key="cond", Body=b"2", **kwargs)
    s3.put_object(Bucket="fpn-test", Key="cond", Body=b"3", IfMatch=etag)


_CONTENDER = """
import sys, time
from fpn.storage.lease import Lease
location, start = sys.argv[1], float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
lease = Lease(location, ttl_s=30)
won = lease.try_acquire()
print("won" if won else "lost", flush=True)
if won:
    time.sleep(1.0)  # hold it while the others try
    lease.release()
"""


@pytest.mark.parametrize("stale", [False, True], ids=["free", "stale"])
def test_racing_processes_exactly_one_wins(tmp_path, stale):
    """Four processes go for the same lease at the same instant (free, or a dead holder's)."""
    location = str(tmp_path / "writer.lease")
    if stale:
        _dead_holder(location, age_s=10)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.time() + 2.0  # after every interpreter has started
    procs = [subprocess.Popen([sys.executable, "-c", _CONTENDER, location, str(start)],
                              stdout=subprocess.PIPE, text=True, env=env) for _ in range(4)]
    results = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert sorted(results) == ["lost", "lost", "lost", "won"], results
    assert read_lease(location) is None
    assert os.listdir(tmp_path) == []  # no private claim files left behind


def test_unreadable_lease_is_held_until_it_goes_stale(tmp_path):
    location = tmp_path / "writer.lease"
    location.write_text("not json")
    os.utime(location, (time.time() - 10, time.time() - 10))
    with Lease(str(location), ttl_s=30) as lease:
        assert lease.took_over is not None and "unreadable" in lease.took_over.owner.command
        assert json.loads(location.read_text())["owner"]["token"] == lease.owner.token


def test_unsupported_scheme_is_a_clear_error():
    from fpn.storage.lease import LeaseError

    with pytest.raises(LeaseError, match="memory://x/lease: leases need"):
        Lease("memory://x/lease")


def test_a_holder_killed_on_this_machine_is_taken_over_at_once(tmp_path):
    """A killed job restarted on the same machine does not wait out the TTL: the holder's
    process is gone. A live holder's lease, and one from another process space (another
    machine, or a container with its own pid namespace), still wait for the TTL."""
    location = str(tmp_path / "writer.lease")
    code = ("import sys, time; from fpn.storage.lease import Lease; "
            "lease = Lease(sys.argv[1], ttl_s=600); lease.acquire(); print('held', flush=True); "
            "time.sleep(600)")
    holder = subprocess.Popen(
        [sys.executable, "-c", code, location],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LeaseHeld, match="stale after 600s"):
            Lease(location, ttl_s=600).acquire()  # alive: held
    finally:
        holder.kill()
        holder.wait()  # reaped: its pid is free
    with Lease(location, ttl_s=600) as lease:
        assert lease.took_over is not None and lease.took_over.owner.pid == holder.pid

    elsewhere = LeaseOwner("other-node", holder.pid, "bob", "ab" * 16, "python -m x",
                           process_space="another-boot:pid:[4026531836]")
    now = time.time()
    Path(location).write_bytes(LeaseRecord(elsewhere, now, now, 600.0).to_json())
    with pytest.raises(LeaseHeld, match="bob@other-node"):
        Lease(location, ttl_s=600).acquire()
