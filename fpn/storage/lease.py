"""A lease: one holder at a time for a shared resource, across processes and nodes.

A lease is one small JSON object at a location (a local path, a ``file://`` URL or an ``s3://``
URL) naming its holder (host, pid, user, a random token, the command), when it was acquired and
when its holder last proved alive (the heartbeat). While the holder runs, a daemon thread
refreshes the heartbeat every ``heartbeat_s``; a lease whose heartbeat is older than ``ttl_s``
belongs to a holder presumed dead and may be taken over, and so does one whose holder ran on
this machine (same boot, same pid namespace) and whose process has exited.

Every change is atomic on the storage itself, so two contenders can never both win:

- local disk: the lease is created with a hard link of a fully written temporary file (fails
  with ``EEXIST`` exactly like ``O_EXCL``, and the lease never exists half-written); the heartbeat
  is the file's modification time (``os.utime``), so the file is never replaced while held; a
  takeover or a release first renames the lease to a private name (only one rename can win),
  checks that what it got is what it meant to remove, and puts it back otherwise.
- S3: creation is a conditional put (``If-None-Match: *``); heartbeat, takeover and release are
  conditional on the ETag read just before (``If-Match``), so a write based on a stale read
  fails with 412 instead of overwriting.

Clocks: staleness compares the heartbeat written by the holder's clock with the reader's clock;
hosts sharing a lease must keep their clocks in sync (NTP) to well within ``ttl_s``.

Example::

    with Lease("s3://bucket/store.zarr/writer.lease", ttl_s=60) as lease:
        ...              # work; call lease.check() before a step that must not run unleased
    # released on exit, even on an exception

    try:
        Lease(path).acquire()
    except LeaseHeld as held:
        print(held)      # "<path>: held by alice@node1 pid 4242 (python -m ...), heartbeat 3s ago"
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, Self

__all__ = [
    "Lease",
    "LeaseError",
    "LeaseHeld",
    "LeaseLost",
    "LeaseOwner",
    "LeaseRecord",
    "read_lease",
]

LEASE_VERSION = 1


class LeaseError(RuntimeError):
    """Base class of lease errors."""


class LeaseHeld(LeaseError):
    """The lease is held by someone else (whose heartbeat is fresh).

    Attributes:
        location: the lease's location.
        holder: the holder's record.
    """

    def __init__(self, location: str, holder: LeaseRecord, now: float | None = None):
        self.location = location
        self.holder = holder
        super().__init__(f"{location}: held by {holder.describe(now)}")


class LeaseLost(LeaseError):
    """This process held the lease but no longer does (taken over, deleted, or not refreshed)."""


def _process_space() -> str:
    """Where a pid means one process: this boot of this kernel and this pid namespace (Linux);
    "" where that cannot be told (then only the TTL says a holder is gone). Containers that
    share the host's name (``--net=host``) have their own pid namespace, so a pid there is
    never looked up here."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}:{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


@dataclass(frozen=True)
class LeaseOwner:
    """Who holds (or wants) a lease; ``token`` tells two holders on one host and pid apart."""

    host: str
    pid: int
    user: str
    token: str
    command: str
    #: :func:`_process_space` of the holder: where its ``pid`` can be looked up ("" = nowhere)
    process_space: str = ""

    def gone(self) -> bool:
        """True when the holder ran in this process space and its process has exited: its
        lease is stale at once, whatever its heartbeat says (a killed job restarted on the same
        machine does not wait out the TTL). A reused pid only delays that to the TTL."""
        return (bool(self.process_space) and self.process_space == _process_space()
                and not _pid_alive(self.pid))

    @classmethod
    def current(cls, command: str | None = None) -> LeaseOwner:
        """This process, with a fresh token; ``command`` defaults to the process's command line."""
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # no passwd entry (containers)
            user = str(os.getuid()) if hasattr(os, "getuid") else "?"
        return cls(host=socket.gethostname(), pid=os.getpid(), user=user,
                   token=uuid.uuid4().hex, command=command or " ".join(sys.argv) or sys.executable,
                   process_space=_process_space())


@dataclass(frozen=True)
class LeaseRecord:
    """The content of a lease object."""

    owner: LeaseOwner
    acquired_at: float
    heartbeat_at: float
    ttl_s: float
    version: int = LEASE_VERSION

    def stale(self, now: float | None = None) -> bool:
        """True when the heartbeat is older than the TTL the holder announced, or the holder's
        process is known to have exited (:meth:`LeaseOwner.gone`)."""
        return ((time.time() if now is None else now) - self.heartbeat_at > self.ttl_s
                or self.owner.gone())

    def describe(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        o = self.owner
        since = datetime.fromtimestamp(self.acquired_at, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        return (f"{o.user}@{o.host} pid {o.pid} ({o.command}) since {since}, heartbeat "
                f"{max(0.0, now - self.heartbeat_at):.0f}s ago (stale after {self.ttl_s:g}s)")

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> LeaseRecord:
        raw = json.loads(data)
        return cls(owner=LeaseOwner(**raw["owner"]), acquired_at=float(raw["acquired_at"]),
                   heartbeat_at=float(raw["heartbeat_at"]), ttl_s=float(raw["ttl_s"]),
                   version=int(raw.get("version", LEASE_VERSION)))


# -- storage ----------------------------------------------------------------------------------------
class _Backend(Protocol):
    def read(self) -> tuple[LeaseRecord, Any] | None: ...
    def create(self, record: LeaseRecord) -> bool: ...
    def refresh(self, record: LeaseRecord, version: Any, now: float) -> Any | None: ...
    def replace(self, version: Any, record: LeaseRecord) -> bool: ...
    def delete(self, version: Any, token: str) -> bool: ...


def _unreadable(data: bytes, mtime: float) -> LeaseRecord:
    # A lease object that does not parse (foreign or damaged) is held by "unknown" and its
    # heartbeat is its modification time: it goes stale like any other.
    return LeaseRecord(LeaseOwner("?", 0, "?", "", f"unreadable lease ({len(data)} bytes)"),
                       mtime, mtime, 0.0)


class _LocalBackend:
    """A lease file on a local (or NFS) file system; the version is ``(inode, token)``."""

    def __init__(self, path: str):
        self.path = path

    def _private(self, what: str) -> str:
        return f"{self.path}.{what}-{uuid.uuid4().hex[:12]}"

    def _read_path(self, path: str) -> tuple[LeaseRecord, Any] | None:
        try:
            with open(path, "rb") as handle:
                stat = os.fstat(handle.fileno())
                data = handle.read()
        except FileNotFoundError:
            return None
        try:
            record = LeaseRecord.from_json(data)
        except (ValueError, KeyError, TypeError):
            record = _unreadable(data, stat.st_mtime)
        # the heartbeat of a local lease is the file's mtime (see refresh)
        record = LeaseRecord(record.owner, record.acquired_at,
                             max(record.heartbeat_at, stat.st_mtime), record.ttl_s, record.version)
        return record, (stat.st_ino, record.owner.token)

    def read(self) -> tuple[LeaseRecord, Any] | None:
        return self._read_path(self.path)

    def create(self, record: LeaseRecord) -> bool:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        staging = self._private("new")
        with open(staging, "wb") as handle:
            handle.write(record.to_json())
            handle.flush()
            os.fsync(handle.fileno())
        os.utime(staging, (record.heartbeat_at, record.heartbeat_at))
        try:
            os.link(staging, self.path)  # atomic create-if-absent
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(staging)

    def refresh(self, record: LeaseRecord, version: Any, now: float) -> Any | None:
        for attempt in range(3):
            try:
                os.utime(self.path, (now, now))
                break
            except FileNotFoundError:
                # a contender may hold it renamed for a moment (and put it back: see _claim)
                time.sleep(0.05 * (attempt + 1))
        else:
            return None
        found = self.read()
        # touching a lease someone else took over is harmless: they are alive anyway
        return found[1] if found is not None and found[1] == version else None

    def _claim(self, version: Any, stale_only: bool) -> str | None:
        """Rename the lease to a private name if it is still ``version`` (and, with
        ``stale_only``, still stale: its holder may have refreshed it since we looked)."""
        private = self._private("claim")
        try:
            os.rename(self.path, private)
        except FileNotFoundError:
            return None
        found = self._read_path(private)
        if found is not None and found[1] == version and not (stale_only and not found[0].stale()):
            return private
        # not the one we meant to remove: put it back (unless someone created a new one since)
        try:
            os.link(private, self.path)
        except FileExistsError:
            pass
        os.unlink(private)
        return None

    def replace(self, version: Any, record: LeaseRecord) -> bool:
        private = self._claim(version, stale_only=True)
        if private is None:
            return False
        os.unlink(private)
        return self.create(record)

    def delete(self, version: Any, token: str) -> bool:
        private = self._claim(version, stale_only=False)
        if private is None:
            return False
        os.unlink(private)
        return True


class _S3Backend:
    """A lease object on S3 (or an S3-compatible store with conditional writes); version = ETag."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None):
        import s3fs

        self.fs = s3fs.S3FileSystem(**(storage_options or {}))
        self.bucket, self.key, _ = self.fs.split_path(url)

    def _call(self, method: str, **kwargs: Any) -> Any:
        return self.fs.call_s3(method, Bucket=self.bucket, Key=self.key, **kwargs)

    @staticmethod
    def _precondition_failed(exc: BaseException) -> bool:
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        error = getattr(cause, "response", {}).get("Error", {})
        return str(error.get("Code")) in ("PreconditionFailed", "412", "ConditionalRequestConflict")

    def read(self) -> tuple[LeaseRecord, Any] | None:
        from fsspec.asyn import sync

        async def get() -> tuple[bytes, str, float]:
            response = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=self.key)
            body = await response["Body"].read()
            return body, response["ETag"], response["LastModified"].timestamp()

        try:
            data, etag, modified = sync(self.fs.loop, get)
        except FileNotFoundError:
            return None
        try:
            return LeaseRecord.from_json(data), etag
        except (ValueError, KeyError, TypeError):
            return _unreadable(data, modified), etag

    def create(self, record: LeaseRecord) -> bool:
        try:
            self._call("put_object", Body=record.to_json(), IfNoneMatch="*")
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            if self._precondition_failed(exc):
                return False
            raise

    def _put_if_match(self, version: Any, record: LeaseRecord) -> Any | None:
        try:
            return self._call("put_object", Body=record.to_json(), IfMatch=version)["ETag"]
        except (FileNotFoundError, FileExistsError):
            return None
        except OSError as exc:
            if self._precondition_failed(exc):
                return None
            raise

    def refresh(self, record: LeaseRecord, version: Any, now: float) -> Any | None:
        fresh = LeaseRecord(record.owner, record.acquired_at, now, record.ttl_s, record.version)
        return self._put_if_match(version, fresh)

    def replace(self, version: Any, record: LeaseRecord) -> bool:
        return self._put_if_match(version, record) is not None

    def delete(self, version: Any, token: str) -> bool:
        try:
            self._call("delete_object", IfMatch=version)
            return True
        except FileNotFoundError:
            return False
        except OSError as exc:
            if self._precondition_failed(exc):
                return False
            # a store without conditional deletes: delete if it still names us (small window)
            found = self.read()
            if found is None or found[0].owner.token != token:
                return False
            self._call("delete_object")
            return True


def _backend(location: str, storage_options: dict[str, Any] | None) -> _Backend:
    location = str(location)
    if "://" not in location:
        return _LocalBackend(location)
    if location.startswith("file://"):
        return _LocalBackend(location[len("file://"):])
    if location.startswith(("s3://", "s3a://")):
        return _S3Backend(location, storage_options)
    raise LeaseError(f"{location}: leases need a local path, file:// or s3:// (a store with "
                     "atomic create-if-absent and compare-and-swap); this scheme has neither here")


def read_lease(location: str, storage_options: dict[str, Any] | None = None) -> LeaseRecord | None:
    """The record of the lease at ``location``, or None when nobody holds it."""
    found = _backend(location, storage_options).read()
    return None if found is None else found[0]


# -- the lease --------------------------------------------------------------------------------------
@dataclass(eq=False)  # a lease is one holder's handle: identity, not value
class Lease:
    """An exclusive lease at ``location``; use as a context manager or call acquire/release.

    Args:
        location: where the lease object lives (local path, ``file://`` or ``s3://`` URL).
        ttl_s: a holder whose heartbeat is older than this is presumed dead (its lease can be
            taken over); announced in the record, so the holder's own TTL is what others apply.
        heartbeat_s: refresh period (default ``ttl_s / 4``, so three refreshes may fail in a row).
        owner: who holds it (default :meth:`LeaseOwner.current`).
        storage_options: fsspec/s3fs options for URLs (endpoint, credentials).
        on_lost: called once from the heartbeat thread if the lease is found lost.
    """

    location: str
    ttl_s: float = 120.0
    heartbeat_s: float | None = None
    owner: LeaseOwner = field(default_factory=LeaseOwner.current)
    storage_options: dict[str, Any] | None = None
    on_lost: Callable[[LeaseLost], None] | None = None

    def __post_init__(self) -> None:
        if self.ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, got {self.ttl_s}")
        self.heartbeat_s = self.heartbeat_s or self.ttl_s / 4
        if not 0 < self.heartbeat_s < self.ttl_s:
            raise ValueError(f"heartbeat_s must be in (0, ttl_s), got {self.heartbeat_s}")
        self._backend = _backend(self.location, self.storage_options)
        self._record: LeaseRecord | None = None
        self._version: Any = None
        self._lost: LeaseLost | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.took_over: LeaseRecord | None = None  # the stale record replaced, if any

    # -- state ------------------------------------------------------------------------------
    @property
    def held(self) -> bool:
        """True while acquired, not released and not found lost."""
        return self._record is not None and self._lost is None

    @property
    def record(self) -> LeaseRecord | None:
        return self._record

    def check(self) -> None:
        """Raise :class:`LeaseLost` unless the lease is held (call before irreversible steps).

        Reads the lease object, so a takeover is seen even between two heartbeats.
        """
        if self._record is None:
            raise LeaseLost(f"{self.location}: not acquired")
        if self._lost is None:
            found = self._backend.read()
            if found is None or found[0].owner.token != self.owner.token:
                holder = "nobody" if found is None else found[0].describe()
                self._lose(f"{self.location}: lease lost; now held by {holder}")
            elif time.time() - self._record.heartbeat_at > self.ttl_s:
                self._lose(f"{self.location}: lease not refreshed for more than {self.ttl_s:g}s")
        if self._lost is not None:
            raise self._lost

    def _lose(self, message: str) -> None:
        if self._lost is None:
            self._lost = LeaseLost(message)
            if self.on_lost is not None:
                self.on_lost(self._lost)

    # -- acquire / release ------------------------------------------------------------------
    def try_acquire(self) -> bool:
        """Acquire if free or stale; False when someone else holds it (see :meth:`acquire`)."""
        try:
            self.acquire()
            return True
        except LeaseHeld:
            return False

    def acquire(self) -> Lease:
        """Take the lease, taking over a stale one atomically.

        Raises:
            LeaseHeld: someone else holds it with a fresh heartbeat (the error names them).
            LeaseError: already acquired by this object.
        """
        if self._record is not None:
            raise LeaseError(f"{self.location}: already acquired by this Lease")
        for _ in range(8):  # each round loses only to a concurrent change; then look again
            now = time.time()
            record = LeaseRecord(self.owner, now, now, float(self.ttl_s))
            found = self._backend.read()
            if found is None:
                if self._backend.create(record):
                    return self._start(record)
                continue
            current, version = found
            if not current.stale(now):
                raise LeaseHeld(self.location, current, now)
            if self._backend.replace(version, record):
                self.took_over = current
                return self._start(record)
        found = self._backend.read()
        raise LeaseHeld(self.location, found[0] if found else record)

    def _start(self, record: LeaseRecord) -> Lease:
        found = self._backend.read()
        if found is None or found[0].owner.token != self.owner.token:
            raise LeaseError(f"{self.location}: lease vanished right after it was acquired")
        self._record, self._version, self._lost = found[0], found[1], None
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"lease-heartbeat:{self.location}",
                                        daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        assert self.heartbeat_s is not None
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.heartbeat()
            except LeaseLost:
                return
            except Exception:  # noqa: BLE001 -- transient storage errors: retry next period
                assert self._record is not None
                if time.time() - self._record.heartbeat_at > self.ttl_s:
                    self._lose(f"{self.location}: heartbeat failed for more than {self.ttl_s:g}s")
                    return

    def heartbeat(self) -> None:
        """Refresh the heartbeat now (the thread does this every ``heartbeat_s``).

        Raises:
            LeaseLost: the lease is no longer ours.
        """
        with self._lock:
            if self._record is None:
                raise LeaseLost(f"{self.location}: not acquired")
            if self._lost is not None:
                raise self._lost
            now = time.time()
            version = self._backend.refresh(self._record, self._version, now)
            if version is None:
                found = self._backend.read()
                holder = "nobody" if found is None else found[0].describe(now)
                self._lose(f"{self.location}: lease lost; now held by {holder}")
                raise self._lost  # type: ignore[misc]
            r = self._record
            self._record = LeaseRecord(r.owner, r.acquired_at, now, r.ttl_s, r.version)
            self._version = version

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if it is still ours (idempotent)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None
        with self._lock:
            if self._record is not None and self._lost is None:
                self._backend.delete(self._version, self.owner.token)
            self._record, self._version = None, None

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
