"""Spot interruptions (issue 13, docs/cluster.md): checkpoints every N optimizer steps, resumed
mid-epoch; the EC2 spot notice (a local HTTP server on 127.0.0.1 stands in for the instance
metadata endpoint, which cannot exist here) and SIGTERM make the loop checkpoint at the next step
boundary and stop; the restart loses no step. Every training state loads with
``weights_only=True``."""

from __future__ import annotations

import json
import os
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from fpn.config import TrainConfig, set_dotted
from fpn.training.interruption import SpotNoticePoller, StopRequest, install_sigterm_handler

NOTICE = {"action": "terminate", "time": "2026-11-30T08:00:00Z"}


class _Metadata:
    """A stand-in for the EC2 instance metadata service (IMDSv2) on 127.0.0.1: the spot notice
    is 404 until ``notice_after`` GETs, then served ``times`` times, then 404 again."""

    def __init__(self, notice_after: int = 0, times: int = 1):
        self.gets = 0
        self.tokens_seen: list[str | None] = []
        meta = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_PUT(self):
                ok = self.path == "/latest/api/token" and self.headers.get(
                    "X-aws-ec2-metadata-token-ttl-seconds")
                body = b"tok-123"
                self.send_response(200 if ok else 400)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path != "/latest/meta-data/spot/instance-action":
                    self.send_error(404)
                    return
                meta.tokens_seen.append(self.headers.get("X-aws-ec2-metadata-token"))
                meta.gets += 1
                if notice_after < meta.gets <= notice_after + times:
                    body = json.dumps(NOTICE).encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                else:
                    self.send_error(404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = (f"http://127.0.0.1:{self.server.server_address[1]}"
                    "/latest/meta-data/spot/instance-action")
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def metadata():
    made: list[_Metadata] = []

    def make(**kw) -> _Metadata:
        made.append(_Metadata(**kw))
        return made[-1]

    yield make
    for m in made:
        m.close()


def test_poller_raises_the_stop_request_on_a_notice_only(metadata):
    meta = metadata(notice_after=2)
    stop = StopRequest()
    poller = SpotNoticePoller(meta.url, stop, interval=0.05)
    poller.start()
    assert stop.wait(10)
    assert meta.gets == 3 and "terminate" in stop.reason
    assert set(meta.tokens_seen) == {"tok-123"}  # IMDSv2: a session token on every GET
    poller.join(5)
    assert not poller.is_alive()


def test_poller_stays_idle_without_a_metadata_service():
    stop = StopRequest()
    # a closed port on 127.0.0.1: what a machine off EC2 answers
    assert SpotNoticePoller("http://127.0.0.1:9/latest/meta-data/spot/instance-action",
                            stop, timeout=0.5).check_once() is None
    assert not stop.is_set()


def test_sigterm_requests_a_stop_instead_of_killing(tmp_path):
    stop = StopRequest()
    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert install_sigterm_handler(stop)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.wait(5) and stop.reason == "SIGTERM"
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert not install_sigterm_handler_from_a_thread()


def install_sigterm_handler_from_a_thread() -> bool:
    out: list[bool] = []
    t = threading.Thread(target=lambda: out.append(install_sigterm_handler(StopRequest())))
    t.start()
    t.join()
    return out[0]


def test_training_state_refuses_pickled_code(tmp_path):
    """The old code read train_state.pt with weights_only=False: a file on the shared storage
    could run code in every worker that resumed from it."""
    from fpn.config import OptimConfig
    from fpn.training.loop import build_optimizer, build_scheduler
    from fpn.training.worker import RestoredState, load_train_state, save_train_state, train_state

    net = torch.nn.Conv3d(1, 1, 3)
    opt = build_optimizer(net, OptimConfig(name="adamw", lr=0.01, schedule="cosine"))
    sched = build_scheduler(opt, OptimConfig(schedule="cosine"), 3)
    net(torch.randn(1, 1, 4, 4, 4)).sum().backward()
    opt.step()
    sched.step()
    state = train_state(1, 5, RestoredState(history=[{"epoch": 0.0, "val_score": 0.5}],
                                            pretrained={"weight"}), opt, sched, 2, (1.5, 4))
    save_train_state(state, tmp_path / "state.pt")
    plain = torch.load(tmp_path / "state.pt", weights_only=True)  # loads without pickle
    assert plain["step"] == 5 and plain["pretrained"] == ["weight"]
    back = load_train_state(tmp_path / "state.pt")
    opt.load_state_dict(back["optimizer"])
    sched.load_state_dict(back["scheduler"])
    assert torch.equal(back["torch_rng"], state["torch_rng"])

    class Evil:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    torch.save({"epoch": 0, "history": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="[Ww]eights only load failed|Unsupported"):
        load_train_state(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()


def _cfg(store: Path, tmp: Path, **over) -> TrainConfig:
    tree = {
        "task": "finetune",
        "data": {"store": str(store), "crop": [8, 32], "multiplier": 4, "loader_workers": 0},
        "model": {"name": "fpn", "kwargs": {"width": 0.25}},
        "optim": {"lr": 0.01},
        "epochs": 2, "batch_size": 2, "workers": 2, "threads_per_worker": 1,
        "storage": str(tmp / "runs"), "mlflow": f"sqlite:///{tmp / 'mlflow.db'}",
        "log_model": False, "keep_best": 1, "max_failures": 1, "overlay_every": 0,
    }
    for k, v in over.items():
        set_dotted(tree, k, v)
    return TrainConfig.model_validate(tree)


@pytest.mark.unit
def test_a_fault_drill_epoch_needs_its_step(tmp_path):
    """fail_at_epoch only says in which epoch fail_at_step kills a worker: alone it is refused
    (it once killed a worker at the end of that epoch; benchmarks/drills.py's node loss tests
    that restart now)."""
    with pytest.raises(ValueError, match="set fail_at_step too"):
        _cfg(tmp_path, tmp_path, fail_at_epoch=1)
    assert _cfg(tmp_path, tmp_path, fail_at_epoch=1, fail_at_step=2).fail_at_epoch == 1


def _attempts(run_dir: str) -> list[dict]:
    return [json.loads(x) for x in (Path(run_dir) / "attempts.jsonl").read_text().splitlines()]


def _epochs_logged(cfg: TrainConfig, run_id: str) -> list[int]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cfg.tracking_uri())
    assert client.get_run(run_id).info.status == "FINISHED"
    return sorted(m.step for m in client.get_metric_history(run_id, "train/loss"))


@pytest.mark.slow
def test_a_lost_worker_resumes_from_the_last_step_checkpoint(synthetic_store, ray_local,
                                                             tmp_path):
    from fpn.storage import MODEL_FILE
    from fpn.training.driver import run_training
    from fpn.training.worker import STATE_FILE, STEP_CHECKPOINT_FILE

    cfg = _cfg(synthetic_store, tmp_path, run_name="steps", epochs=1, checkpoint_every_steps=2,
               fail_at_step=3)
    outcome = run_training(cfg)
    attempts = _attempts(outcome.run_dir)
    # died after step 3 of epoch 0; the checkpoint of step 2 re-runs one step, not the epoch
    assert [(a["start_epoch"], a["start_step"]) for a in attempts] == [(0, 0), (0, 2)]
    assert _epochs_logged(cfg, outcome.mlflow_run_id) == [0]
    step = torch.load(Path(outcome.run_dir) / STEP_CHECKPOINT_FILE, weights_only=True)
    assert step["epoch"] == 0 and step["step"] >= 2 and step["world_size"] == 2
    epoch_state = torch.load(Path(outcome.best_checkpoints[0]) / STATE_FILE, weights_only=True)
    assert epoch_state["step"] == 0 and len(epoch_state["history"]) == epoch_state["epoch"] + 1
    assert (Path(outcome.best_checkpoints[0]) / MODEL_FILE).is_file()


@pytest.mark.slow
def test_a_spot_notice_checkpoints_at_the_next_step_and_the_restart_goes_on(
        synthetic_store, ray_local, tmp_path, metadata):
    from fpn.training.driver import run_training

    meta = metadata(notice_after=0, times=1)  # one notice, at the first poll of the first start
    cfg = _cfg(synthetic_store, tmp_path, run_name="spot", epochs=1, spot_notice_url=meta.url)
    outcome = run_training(cfg)
    attempts = _attempts(outcome.run_dir)
    assert len(attempts) == 2 and attempts[0]["start_step"] == 0
    assert attempts[1]["start_epoch"] == 0 and attempts[1]["start_step"] >= 1  # nothing lost
    assert _epochs_logged(cfg, outcome.mlflow_run_id) == [0]
