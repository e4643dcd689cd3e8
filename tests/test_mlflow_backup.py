"""The MLflow server's sqlite files outlive the head: backup to a bucket (moto's S3 server on
127.0.0.1) and restore before the server starts, as cluster.yaml runs them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import S3_BUCKET

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
pytest.importorskip("s3fs", reason="s3fs is in the 'cloud' extra")
pytest.importorskip("moto.server", reason="moto[server] is in the 'dev' extra")

BUCKET = S3_BUCKET  # moto's S3 server: the s3_endpoint fixture of tests/conftest.py


def _tracking_db(path) -> str:
    """A real MLflow sqlite store with a registered model whose champion alias is set."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{path}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("ga-fpn")
    client.create_model_version("ga-fpn", path.parent.as_uri(), tags={"test_dice": "0.8"})
    client.set_registered_model_alias("ga-fpn", "champion", "1")
    return uri


def test_backup_to_the_bucket_and_restore_on_a_new_head(s3_endpoint, tmp_path):
    from mlflow.tracking import MlflowClient

    from fpn.mlflow_backup import main

    old, new = tmp_path / "old" / "mlflow.db", tmp_path / "new" / "mlflow.db"
    old.parent.mkdir()
    _tracking_db(old)
    url = f"s3://{BUCKET}/mlflow-db"
    assert main(["backup", "--to", url, str(old)]) == 0
    # a new head (after `ray down` / `ray up`): nothing local, the backup comes back
    assert main(["restore", "--from", url, str(new), str(new.with_name("basic_auth.db"))]) == 0
    uri = f"sqlite:///{new}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert str(client.get_registered_model("ga-fpn").aliases["champion"]) == "1"
    assert not new.with_name("basic_auth.db").exists()  # never backed up: skipped, not invented
    # an existing file is never replaced
    before = new.stat().st_mtime_ns
    assert main(["restore", "--from", url, str(new)]) == 0
    assert new.stat().st_mtime_ns == before


def test_a_damaged_backup_is_not_restored(s3_endpoint, tmp_path, capsys):
    import s3fs

    from fpn.mlflow_backup import main

    s3fs.S3FileSystem().pipe(f"{BUCKET}/broken/mlflow.db", b"SQLite format 3\x00" + b"x" * 200)
    target = tmp_path / "mlflow.db"
    assert main(["restore", "--from", f"s3://{BUCKET}/broken", str(target)]) == 2
    assert "integrity check" in capsys.readouterr().err
    assert not target.exists() and not list(tmp_path.iterdir())


def test_periodic_backup_ends_with_a_last_copy_on_sigterm(tmp_path):
    db = tmp_path / "mlflow.db"
    _tracking_db(db)
    out = tmp_path / "backups"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "fpn.mlflow_backup", "backup", "--to", str(out),
                             "--every", "3600", str(db)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()  # the handlers are in place once it says so
        assert first.startswith("backing up"), proc.stderr.read()
        time.sleep(0.5)  # an hour's period: only the SIGTERM can make the copy
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert "backed up" in stdout and (out / "mlflow.db").is_file()
    assert not (out / "mlflow.db.partial").exists()
