"""What MLflow's job runner costs the head's tracking server, side by side in one run.

Question: ``mlflow server`` (MLflow 3) starts, beside the server, a job runner with several huey
consumer processes for MLflow's GenAI jobs, which fpn never submits. How much CPU and memory is
that on the head? (cluster.yaml starts the server with ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``.)

Method: on 127.0.0.1, ``mlflow server --workers 1`` on a new sqlite store, started ``--repeats``
times with the job runner (MLflow's default) and as often without it, alternating. For each
start: the busy CPU of the whole machine (``/proc/stat``) from the start until ``/health``
answers plus ``--idle`` seconds, then the processes of the server's process group and their
resident memory, then SIGTERM to the group. Linux only.

    python benchmarks/mlflow_server_cost.py --repeats 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from train_run_cost import busy_cpu_s  # this folder: run as a script


def group_rss_mib(pgid: int) -> tuple[int, float]:
    """Processes in process group ``pgid`` and their summed resident memory (MiB)."""
    count, rss = 0, 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.getpgid(int(pid)) != pgid:
                continue
            status = Path(f"/proc/{pid}/status").read_text()
        except (OSError, ProcessLookupError):
            continue
        count += 1
        rss += next((int(line.split()[1]) for line in status.splitlines()
                     if line.startswith("VmRSS:")), 0) / 1024
    return count, rss


def one_start(work: Path, job_execution: bool, idle_s: float) -> tuple[float, int, float]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    store = work / f"mlflow-{time.time_ns()}.db"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true" if job_execution else "false"}
    c0 = busy_cpu_s()
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1", "--backend-store-uri",
                             f"sqlite:///{store}"], env=env, cwd=work, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("mlflow server did not answer") from None
                time.sleep(0.5)
        time.sleep(idle_s)
        cpu = busy_cpu_s() - c0
        count, rss = group_rss_mib(proc.pid)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        time.sleep(2)  # the group's children exit after the server
    return cpu, count, rss


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2, help="starts per setting")
    ap.add_argument("--idle", type=float, default=20.0, help="seconds idle after /health")
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.idle < 0:
        ap.error(f"--repeats must be >= 1 and --idle >= 0, got {args.repeats} and {args.idle:g}")
    work = Path(tempfile.mkdtemp(prefix="fpn-mlflow-cost-"))
    rows: dict[bool, list[tuple[float, int, float]]] = {True: [], False: []}
    try:
        for _ in range(args.repeats):
            for job_execution in (True, False):
                rows[job_execution].append(one_start(work, job_execution, args.idle))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"| job runner | CPU s (start + {args.idle:g} s idle) | processes | resident MiB |\n"
          "|---|---|---|---|")
    med = {}
    for job_execution, runs in rows.items():
        med[job_execution] = tuple(statistics.median(r[i] for r in runs) for i in range(3))
        cpu, count, rss = med[job_execution]
        print(f"| {'on (default)' if job_execution else 'off'} | {cpu:.1f} | {count:.0f} | "
              f"{rss:.0f} |")
    on, off = med[True], med[False]
    print(f"\nthe job runner adds {on[0] - off[0]:.1f} CPU s ({on[0] / off[0]:.2f}x), "
          f"{on[1] - off[1]:.0f} processes and {on[2] - off[2]:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
