"""Keep the MLflow server's sqlite files beyond the machine: consistent copies to a bucket, and
back before the server starts.

The cluster's MLflow server keeps its backend store (runs, registry, the ``champion`` alias and the
gate's history) and its basic-auth user store in sqlite files on the head's disk, which ``ray
down`` deletes. ``backup`` copies each file with sqlite's online-backup API (a consistent snapshot
while the server writes) and uploads it whole under ``--to`` (any fsspec URL: ``s3://...`` or a
folder); ``--every N`` repeats it every N seconds and once more on SIGTERM/SIGINT. ``restore``
puts a backup in place of a missing file before the server starts; it never replaces an existing
file, and it checks the download with ``PRAGMA integrity_check`` first.

CLI (``cluster.yaml`` runs both on the head)::

    python -m fpn.mlflow_backup restore --from s3://bucket/mlflow-db ~/mlflow/mlflow.db ...
    python -m fpn.mlflow_backup backup --to s3://bucket/mlflow-db [--every 300] ~/mlflow/mlflow.db ...
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["backup", "main", "restore"]


def _fs(url: str):
    import fsspec

    return fsspec.core.url_to_fs(url)


def _is_local(fs) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols


def _target(base: str, db: Path) -> str:
    return base.rstrip("/") + "/" + db.name


def backup(dbs: Sequence[str | Path], to: str) -> list[str]:
    """Copy each sqlite file in ``dbs`` to ``to/<file name>``; returns the URLs written.

    Raises:
        FileNotFoundError: a file in ``dbs`` does not exist.
    """
    written = []
    for db in map(Path, dbs):
        if not db.is_file():
            raise FileNotFoundError(f"{db}: no such sqlite file to back up")
        url = _target(to, db)
        fs, path = _fs(url)
        with tempfile.TemporaryDirectory() as tmp:
            snapshot = Path(tmp) / db.name
            src, dst = sqlite3.connect(f"file:{db}?mode=ro", uri=True), sqlite3.connect(snapshot)
            try:
                src.backup(dst)  # consistent even while the MLflow server writes
            finally:
                src.close()
                dst.close()
            if _is_local(fs):  # a folder: write beside, then rename, so a copy is always whole
                fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
                fs.put_file(str(snapshot), path + ".partial")
                fs.mv(path + ".partial", path)
            else:  # an object store shows an upload whole or not at all
                fs.put_file(str(snapshot), path)
        written.append(url)
    return written


def restore(dbs: Sequence[str | Path], source: str) -> list[str]:
    """Put ``source/<file name>`` in place of each file of ``dbs`` that does not exist.

    Existing files are never replaced; a missing backup (a first start) is skipped. Returns the
    files restored.

    Raises:
        ValueError: a backup fails sqlite's integrity check (nothing is put in place).
    """
    restored = []
    for db in map(Path, dbs):
        if db.exists():
            continue
        fs, path = _fs(_target(source, db))
        if not fs.exists(path):
            continue
        db.parent.mkdir(parents=True, exist_ok=True)
        partial = db.with_name(db.name + ".partial")
        fs.get_file(path, str(partial))
        try:
            with sqlite3.connect(partial) as conn:
                ok = conn.execute("PRAGMA integrity_check").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            ok = str(exc)
        if ok != "ok":
            partial.unlink()
            raise ValueError(f"{_target(source, db)}: the backup fails sqlite's integrity check "
                             f"({ok}); {db} was not restored")
        os.replace(partial, db)
        restored.append(str(db))
    return restored


def _loop(dbs: Sequence[str], to: str, every: float) -> None:
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print(f"backing up {', '.join(map(str, dbs))} to {to} every {every:g} s and on SIGTERM",
          flush=True)
    while True:
        deadline = time.monotonic() + every
        while not stop and time.monotonic() < deadline:
            time.sleep(min(1.0, every))
        present = [d for d in dbs if Path(d).is_file()]
        try:
            for url in backup(present, to):
                print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} backed up {url}", flush=True)
        except (OSError, sqlite3.Error, ValueError) as exc:  # the next round retries
            print(f"error: backup to {to} failed: {exc}", file=sys.stderr, flush=True)
        if stop:
            return


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fpn.mlflow_backup", description=__doc__
                                     .split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("backup", help="copy sqlite files to a bucket or folder")
    p.add_argument("--to", required=True, help="fsspec URL of the backup folder")
    p.add_argument("--every", type=float, help="repeat every N seconds (and once on SIGTERM)")
    p.add_argument("dbs", nargs="+")
    p = sub.add_parser("restore", help="put backups in place of missing sqlite files")
    p.add_argument("--from", dest="source", required=True, help="fsspec URL of the backup folder")
    p.add_argument("dbs", nargs="+")
    args = parser.parse_args(argv)
    try:
        if args.action == "restore":
            for db in restore(args.dbs, args.source):
                print(f"restored {db} from {args.source}")
        elif args.every:
            _loop(args.dbs, args.to, args.every)
        else:
            for url in backup(args.dbs, args.to):
                print(f"backed up {url}")
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
