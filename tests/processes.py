"""The processes of a Ray cluster a test started, found and ended by id; free ports.

Ray has no "stop this cluster only": ``ray stop`` stops every Ray instance of this user on the
machine, other jobs' too. A test's cluster is known instead by its own temp dir (which its
processes' command lines name) and by the sessions its ``ray start`` commands were started in
(``start_new_session=True``: Ray's daemons stay in that session), with all their descendants (a
job's entrypoint has a session of its own). A process is identified by its pid and start time, so
a pid the kernel has given to another process is never signalled.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterable
from pathlib import Path

Identity = tuple[int, str]  # (pid, start time in clock ticks since boot)


def free_port() -> int:
    """A port free on 127.0.0.1 now (other Ray instances and servers on this machine hold some)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after ``pid (comm)``: state, ppid, pgrp, session, ... (Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone
        return None
    return stat[stat.rindex(")") + 2:].split()


def _identity(pid: int) -> Identity | None:
    fields = _stat(pid)
    return None if fields is None or fields[0] == "Z" else (pid, fields[19])


def cluster_processes(marker: str, sessions: Iterable[int] = ()) -> dict[Identity, str]:
    """The cluster's live processes (identity -> command line): those whose command line names
    ``marker`` (its temp dir) or that live in one of ``sessions``, and all their descendants."""
    sessions = set(sessions)
    table = {}
    for entry in os.listdir("/proc"):
        fields = _stat(int(entry)) if entry.isdigit() else None
        if fields is None or fields[0] == "Z" or int(entry) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
        except OSError:
            continue
        table[int(entry)] = (int(fields[1]), int(fields[3]), fields[19], cmd)
    found = {pid for pid, (_, sid, _, cmd) in table.items() if marker in cmd or sid in sessions}
    grew = True
    while grew:
        children = {pid for pid, (ppid, _, _, _) in table.items() if ppid in found}
        grew = not children <= found
        found |= children
    return {(pid, table[pid][2]): table[pid][3] for pid in found}


def end(processes: Iterable[Identity], wait_s: float = 10.0) -> None:
    """SIGKILL, as a node that dies: nothing of a test's own cluster needs a clean shutdown (on
    SIGTERM some of Ray's processes keep running for 10 s and more). Only ever the processes
    identified; then wait up to ``wait_s`` until they are gone."""
    alive = {p for p in processes if _identity(p[0]) == p}
    for pid, _ in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and any(_identity(p[0]) == p for p in alive):
        time.sleep(0.2)


def end_cluster(marker: str, sessions: Iterable[int] = (), *, rounds: int = 5,
                wait_s: float = 10.0) -> dict[Identity, str]:
    """End the cluster's processes; return those still running (nothing, when all went well).

    Found and ended again while any are left: Ray's dashboard restarts a subprocess module that
    has died, every second and without limit (``ray/dashboard/subprocesses/handle.py``), so a
    module ended just before its dashboard can come back as a new process (a CI run found
    ``ray-dashboard-ServeHead-1``, a restarted module, running after a one-pass teardown).
    """
    sessions = set(sessions)
    for _ in range(rounds):
        processes = cluster_processes(marker, sessions)
        if not processes:
            return {}
        end(processes, wait_s)
    return cluster_processes(marker, sessions)
