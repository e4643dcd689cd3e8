"""The prepared device check: the user-facing entry points on one GPU, with the ratios that matter.

    python benchmarks/device_check.py                    # one GPU, < 8 minutes
    python benchmarks/device_check.py --device cpu       # the same steps at toy size (the test)

Runs, as a user would (subprocesses, the CLIs): ``python -m data_prep synth`` + ``convert`` (a
small synthetic store), ``python -m fpn pretrain`` and ``finetune --init`` (1 worker, 1 GPU) in
three arms (bf16 eager, bf16 ``compile: true``, fp32), ``evaluate`` of the bf16 and fp32 arms on
the test split, ``predict --input`` of a full-size 49 x 496 x 512 volume (NIfTI) with the
5-member k-best ensemble, and a 2-trial ``tune/search.py`` whose trials share the one card
(``--gpus-per-worker 0.5``; one trial on CPU); then ``benchmarks/gpu_train_step.py`` (the bare
training loop on in-memory crops of the same shape) for the reference speed. Every CLI joins one
Ray head that the check starts first (``RAY_ADDRESS``, as a job on a cluster does) instead of
starting and stopping a local Ray of its own, so the steps' times are training, not Ray start-up.
Prints, measured in this run:

- training crops/s through Ray Train (the real worker, store, loader) / the bare loop (goal >= 0.85)
- compile / eager crops/s through Ray Train
- bf16 - fp32 test Dice in points (goal: within 1)
- GPU busy fraction during the epochs after the first, with <= 4 loader processes (goal >= 0.9)
- peak GPU memory used (sampled), seconds per full volume for the ensemble (in process, warm)

Writes the report to ``--out`` (text) and ``--out`` with ``.json`` (figures), and to stdout. Exit
status 0 when every step ran (whatever the ratios), 1 when a step failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EPOCH_LINE = re.compile(r"\[fpn\] epoch (\d+)/(\d+)")


@dataclass(frozen=True)
class Sizes:
    """Everything the check's size depends on, per device."""

    synth_shape: tuple[int, int, int]  # (S, D, W) of the synthetic store's volumes
    patients: int
    unlabelled: int
    visits: int
    crop: tuple[int, int]  # (S, W); depth is the store's
    batch: int
    multiplier: int
    epochs: int  # fine-tuning; keep_best = min(5, epochs): the ensemble's members
    pretrain_epochs: int
    model_kwargs: dict[str, Any]
    loader_workers: int
    cpus_per_worker: int
    gpus_per_worker: float
    predict_shape: tuple[int, int, int]
    search_epochs: int
    search_trials: int
    search_gpus_per_worker: float
    num_cpus: int | None


SIZES = {
    # crops 32 x 128 x 256 at batch 8, as benchmarks/gpu_train_step.py times the bare loop
    "cuda": Sizes(synth_shape=(49, 128, 512), patients=12, unlabelled=2, visits=2, crop=(32, 256),
                  batch=8, multiplier=16, epochs=5, pretrain_epochs=2, model_kwargs={},
                  loader_workers=4, cpus_per_worker=6, gpus_per_worker=1.0,
                  predict_shape=(49, 496, 512), search_epochs=2, search_trials=2,
                  search_gpus_per_worker=0.5,
                  num_cpus=None),
    # gpu_train_step.py --dry-run: crops 8 x 64 x 32 at batch 2 of the full-width FPN
    "cpu": Sizes(synth_shape=(8, 64, 32), patients=5, unlabelled=1, visits=1, crop=(8, 32),
                 batch=2, multiplier=1, epochs=2, pretrain_epochs=1,
                 model_kwargs={"width": 0.25}, loader_workers=2, cpus_per_worker=1,
                 gpus_per_worker=0.0, predict_shape=(9, 64, 40), search_epochs=1,
                 # one trial: what two trials on one card measure has no CPU counterpart, and
                 # each trial is a Ray Train run (tens of CPU seconds) on the 2-core test machine
                 search_trials=1, search_gpus_per_worker=0.0, num_cpus=4),
}


@dataclass
class Step:
    name: str
    seconds: float = 0.0
    ok: bool = False
    detail: str = ""


@dataclass
class Report:
    device: str
    card: str
    started: str
    steps: list[Step] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)


class BusySampler(threading.Thread):
    """Samples device busy fraction and memory every ``interval`` s: the GPU through NVML (or
    ``nvidia-smi``), the CPU from ``/proc`` (so the same code runs in the CPU check)."""

    def __init__(self, device: str, interval: float = 0.2):
        super().__init__(daemon=True)
        self.device, self.interval = device, interval
        self.samples: list[tuple[float, float, float]] = []  # (time, busy 0..1, memory MiB)
        self._halt = threading.Event()
        self._nvml = None
        if device == "cuda":
            try:
                import pynvml

                pynvml.nvmlInit()
                self._nvml = (pynvml, pynvml.nvmlDeviceGetHandleByIndex(0))
            except Exception:  # noqa: BLE001 - fall back to nvidia-smi
                self._nvml = None
        self._cpu_prev = self._cpu_times()

    @staticmethod
    def _cpu_times() -> tuple[float, float]:
        try:
            vals = [float(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        except OSError:
            return 0.0, 0.0
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0.0)
        return sum(vals) - idle, sum(vals)

    def _sample(self) -> tuple[float, float]:
        if self.device == "cuda":
            if self._nvml is not None:
                nvml, handle = self._nvml
                return (nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0,
                        nvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20)
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                  "--format=csv,noheader,nounits", "-i", "0"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout
            util, mem = (float(v) for v in out.strip().split(","))
            return util / 100.0, mem
        busy, total = self._cpu_times()
        pb, pt = self._cpu_prev
        self._cpu_prev = (busy, total)
        frac = (busy - pb) / (total - pt) if total > pt else 0.0
        mem = 0.0
        try:
            info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
            mem = (float(info["MemTotal"].split()[0]) - float(info["MemAvailable"].split()[0])) / 1024
        except (OSError, KeyError, ValueError):
            pass
        return frac, mem

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                busy, mem = self._sample()
                self.samples.append((time.time(), busy, mem))
            except Exception:  # noqa: BLE001, S110 - a missed sample is not a failed check
                pass
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)

    def busy_between(self, t0: float, t1: float) -> float | None:
        window = [b for t, b, _ in self.samples if t0 <= t <= t1]
        return sum(window) / len(window) if window else None

    def peak_memory(self) -> float | None:
        return max((m for _, _, m in self.samples), default=None)


class Checker:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = args.device
        self.sizes = SIZES[self.device]
        self.work = Path(args.work or tempfile.mkdtemp(prefix="fpn-device-check-")).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "PYTHONUNBUFFERED": "1"}  # epoch lines as they happen: they delimit the busy window
        self.mlflow = f"sqlite:///{self.work / 'mlflow.db'}"
        self.storage = str(self.work / "runs")
        self.store = str(self.work / "store.zarr")
        card = "cpu"
        if self.device == "cuda":
            import torch

            card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
        self.report = Report(device=self.device, card=card,
                             started=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))

    # -- running things ---------------------------------------------------------------------------
    def run(self, name: str, cmd: list[str], timeout: float = 900,
            epochs_seen: list[float] | None = None) -> str | None:
        """Run one command; its output goes to ``work/logs/<name>.log``; returns stdout or None."""
        logs = self.work / "logs"
        logs.mkdir(exist_ok=True)
        step = Step(name)
        t0 = time.perf_counter()
        lines: list[str] = []
        print(f"[check] {name}: {' '.join(cmd[1:])[:200]}", flush=True)
        with (logs / f"{name}.log").open("w") as log:
            proc = subprocess.Popen(cmd, cwd=self.work, env=self.env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, bufsize=1)
            timer = threading.Timer(timeout, proc.kill)
            timer.start()
            try:
                assert proc.stdout is not None
                for line in proc.stdout:
                    log.write(line)
                    lines.append(line)
                    if epochs_seen is not None and EPOCH_LINE.search(line):
                        epochs_seen.append(time.time())
                rc = proc.wait()
            except BaseException:  # interrupted: let the CLI shut its Ray down, then go
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                raise
            finally:
                timer.cancel()
        step.seconds = time.perf_counter() - t0
        step.ok = rc == 0
        out = "".join(lines)
        step.detail = "" if step.ok else f"exit {rc}: {out[-1500:]}"
        self.report.steps.append(step)
        print(f"[check] {name}: {'ok' if step.ok else 'FAILED'} in {step.seconds:.1f} s", flush=True)
        if not step.ok:
            print(out[-3000:], flush=True)
        return out if step.ok else None

    @staticmethod
    def last_json(out: str) -> dict[str, Any]:
        """The JSON object a CLI printed last (after Ray's and the workers' log lines)."""
        lines = out.splitlines()
        for i in range(len(lines) - 1, -1, -1):
            if lines[i].startswith("{"):
                try:
                    return json.loads("\n".join(lines[i:]))
                except json.JSONDecodeError:
                    continue
        raise ValueError("no JSON object in the output")

    def py(self, *args: str) -> list[str]:
        return [sys.executable, *args]

    # -- the steps --------------------------------------------------------------------------------
    def make_store(self) -> bool:
        s = self.sizes
        src = self.work / "source"
        if (Path(self.store) / "zarr.json").is_file():
            # a re-run in the same --work folder: the store, and every finished run, are reused
            # (runs are known by name in this folder; the CLIs skip a finished run)
            print(f"[check] reusing {self.store}", flush=True)
            return True
        ok = self.run("synth", self.py("-m", "data_prep", "synth", str(src), "--patients",
                                       str(s.patients), "--unlabelled", str(s.unlabelled),
                                       "--shape", *map(str, s.synth_shape), "--visits",
                                       str(s.visits), "--overwrite"))
        if ok is None:
            return False
        cmd = self.py("-m", "data_prep", "convert", str(src), self.store, "--no-progress")
        if s.num_cpus:
            cmd += ["--num-cpus", str(s.num_cpus)]
        return self.run("convert", cmd) is not None

    def train_config(self, name: str, **over: Any) -> Path:
        s = self.sizes
        tree: dict[str, Any] = {
            "data": {"store": self.store, "crop": list(s.crop), "multiplier": s.multiplier,
                     "loader_workers": s.loader_workers},
            "model": {"name": "fpn", "kwargs": dict(s.model_kwargs)},
            "optim": {"lr": 0.02}, "batch_size": s.batch, "workers": 1,
            "cpus_per_worker": s.cpus_per_worker, "gpus_per_worker": s.gpus_per_worker,
            "max_failures": 0, "storage": self.storage, "mlflow": self.mlflow,
            "experiment": "device-check", "overlay_every": 0, "log_model": False,
        }
        for k, v in over.items():
            tree[k] = v
        path = self.work / f"{name}.yaml"
        import yaml

        path.write_text(yaml.safe_dump(tree, sort_keys=False))
        return path

    def train(self, command: str, name: str, **over: Any) -> tuple[dict[str, Any] | None, list[float]]:
        cfg = self.train_config(name, **over)
        cmd = self.py("-m", "fpn", command, "--config", str(cfg), "--data", self.store,
                      "--run-name", name)
        seen: list[float] = []
        out = self.run(name, cmd, epochs_seen=seen)
        return (self.last_json(out) if out else None), seen

    def crops_per_s(self, run_id: str) -> float | None:
        """Median ``train/crops_per_s`` of the epochs after the first (warm-up, compilation)."""
        from mlflow.tracking import MlflowClient

        hist = sorted(MlflowClient(self.mlflow).get_metric_history(run_id, "train/crops_per_s"),
                      key=lambda m: m.step)
        vals = [m.value for m in hist[1:]] or [m.value for m in hist]
        vals.sort()
        return vals[len(vals) // 2] if vals else None

    def evaluate(self, name: str, run_dir: str) -> dict[str, Any] | None:
        out = self.run(f"evaluate-{name}", self.py(
            "-m", "fpn", "evaluate", "--model", run_dir, "--data", self.store, "--split", "test",
            "--mlflow", self.mlflow, "--out", str(self.work / f"eval-{name}")))
        return self.last_json(out) if out else None

    def full_volume(self) -> Path:
        """A full-size OCT volume as NIfTI (voxel axes W, D, S; spacing in mm)."""
        import nibabel as nib
        import numpy as np

        s, d, w = self.sizes.predict_shape
        rng = np.random.default_rng(0)
        depth = np.linspace(0, 1, d, dtype=np.float32)[None, :, None]
        vol = (np.exp(-((depth - 0.5) / 0.1) ** 2) + 0.3 * rng.gamma(2.0, 0.5, (s, d, w))
               ).astype(np.float32)
        img = nib.Nifti1Image(vol.transpose(2, 1, 0), affine=np.eye(4))
        img.header.set_zooms((0.0114, 0.0039, 0.1229))  # W, D, S in mm (Spectralis-like)
        img.header.set_xyzt_units("mm")
        path = self.work / "full_volume.nii.gz"
        nib.save(img, str(path))
        return path

    def ensemble_seconds(self, run_dir: str) -> tuple[int, float]:
        """Warm seconds per full volume of the k-best ensemble, in this process (median of 3)."""
        import numpy as np

        from fpn.inference import load_ensemble

        ens = load_ensemble(run_dir, self.mlflow, device=self.device)
        vol = np.random.default_rng(1).normal(size=self.sizes.predict_shape).astype(np.float32)
        ens.predict_volume(vol)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            ens.predict_volume(vol)  # returns a numpy array: the device is synchronised
            times.append(time.perf_counter() - t0)
        return len(ens), sorted(times)[1]

    def bare_loop_crops_per_s(self) -> float | None:
        out_dir = self.work / "bare"
        out_dir.mkdir(exist_ok=True)
        env_out = self.env.get("OUT")
        self.env["OUT"] = str(out_dir)
        cmd = self.py(str(ROOT / "benchmarks" / "gpu_train_step.py"))
        if self.device == "cpu":
            cmd.append("--dry-run")
        out = self.run("bare-loop", cmd)
        if env_out is None:
            self.env.pop("OUT")
        else:
            self.env["OUT"] = env_out
        if out is None:
            return None
        rows = json.loads((out_dir / "gpu_train_step.json").read_text())["rows"]
        want = "bf16 autocast + channels_last_3d"
        return next((r["crops_per_s"] for r in rows if r["task"] == "finetune"
                     and r["variant"] == want), None)

    def search(self, pretrained: str) -> None:
        s = self.sizes
        cmd = self.py(str(ROOT / "tune" / "search.py"), "--data", self.store,
                      "--workdir", str(self.work / "search"), "--pretrained", pretrained,
                      "--ratios", "1.0", "--trials", str(s.search_trials),
                      "--max-concurrent", str(s.search_trials),
                      "--epochs", str(s.search_epochs), "--grace-period", "1",
                      "--gpus-per-worker", f"{s.search_gpus_per_worker:g}",
                      "--cpus-per-worker", str(max(1, s.cpus_per_worker // 2)),
                      "--mlflow", self.mlflow, "--no-promote",
                      "--set", f"data.crop=[{s.crop[0]},{s.crop[1]}]",
                      "--set", f"data.multiplier={s.multiplier}",
                      "--set", f"batch_size={s.batch}",
                      "--set", f"data.loader_workers={min(2, s.loader_workers)}")
        if s.num_cpus:
            cmd += ["--num-cpus", str(s.num_cpus)]
        self.run("search-one-card", cmd, timeout=1200)

    # -- one Ray for every step -------------------------------------------------------------------
    def start_ray(self) -> Any:
        """A Ray head of the check's own (``ray.cluster_utils.Cluster``: this process starts and
        stops it), which every CLI joins through ``RAY_ADDRESS`` as on a cluster, instead of
        each starting and stopping a local instance; its address is recorded in a private
        ``RAY_TMPDIR``, so no later ``ray.init()`` on this machine finds a dead cluster."""
        import socket

        from ray.cluster_utils import Cluster

        tmp = tempfile.mkdtemp(prefix="dc", dir="/tmp")  # short: Ray's unix sockets live there
        os.environ["RAY_TMPDIR"] = self.env["RAY_TMPDIR"] = self.ray_tmp = tmp
        with socket.socket() as sock:  # another Ray on this machine may hold 8265
            sock.bind(("127.0.0.1", 0))
            dashboard_port = int(sock.getsockname()[1])
        gpus = 0
        if self.device == "cuda":
            import torch

            gpus = torch.cuda.device_count()
        cluster = Cluster(initialize_head=True, connect=False, head_node_args={
            "num_cpus": self.sizes.num_cpus or os.cpu_count(), "num_gpus": gpus,
            "object_store_memory": (4 << 30) if self.device == "cuda" else (300 << 20),
            "include_dashboard": True, "dashboard_port": dashboard_port})  # Train's state API
        cluster.wait_for_nodes()
        self.env["RAY_ADDRESS"] = cluster.address
        # one node, as connect_ray's local instance: Ray Train's preemption watcher off there too
        # (the CLIs' drivers hand it to Ray Train's controllers)
        from fpn.training.ray_connect import LOCAL_TRAIN_ENV

        self.env.update(LOCAL_TRAIN_ENV)
        print(f"[check] Ray head at {cluster.address} ({gpus} GPU(s)); every step joins it",
              flush=True)
        return cluster

    # -- the whole check --------------------------------------------------------------------------
    def check(self) -> Report:
        t0 = time.perf_counter()
        cluster = self.start_ray()
        self.report.steps.append(Step("ray-head", time.perf_counter() - t0, True))
        try:
            return self._check()
        finally:
            cluster.shutdown()
            shutil.rmtree(self.ray_tmp, ignore_errors=True)

    def _check(self) -> Report:
        s, fig = self.sizes, self.report.figures
        t_start = time.perf_counter()
        if not self.make_store():
            return self.report
        pre, _ = self.train("pretrain", "pre", epochs=s.pretrain_epochs, keep_best=1)
        if pre is None:
            return self.report
        keep = min(5, s.epochs)
        common = {"epochs": s.epochs, "keep_best": keep}
        busy = BusySampler(self.device)
        busy.start()
        try:
            bf16, epochs_seen = self.train("finetune", "ft-bf16", init=pre["run_dir"], **common)
        finally:
            busy.stop()
        if bf16 is not None:
            rate = self.crops_per_s(bf16["mlflow_run_id"])
            fig["ray_train_crops_per_s"] = rate
            if len(epochs_seen) >= 2:
                fig["busy_fraction"] = busy.busy_between(epochs_seen[0], epochs_seen[-1])
            fig["busy_loader_processes"] = s.loader_workers
            fig["peak_memory_mib"] = busy.peak_memory()
        # on CPU dynamo's "eager" backend: the same path through Ray Train without minutes of
        # C++ code generation on a 2-core machine
        backend = "inductor" if self.device == "cuda" else "eager"
        compiled, _ = self.train("finetune", "ft-bf16-compile", init=pre["run_dir"], compile=True,
                                 compile_backend=backend, **common)
        fp32, _ = self.train("finetune", "ft-fp32", init=pre["run_dir"], amp=False,
                             channels_last=False, **common)
        if bf16 is not None and compiled is not None:
            c = self.crops_per_s(compiled["mlflow_run_id"])
            fig["compile_crops_per_s"] = c
            fig["compile_vs_eager"] = c / fig["ray_train_crops_per_s"] if c else None
        if bf16 is not None and fp32 is not None:
            e16, e32 = self.evaluate("bf16", bf16["run_dir"]), self.evaluate("fp32", fp32["run_dir"])
            if e16 and e32:
                fig["dice_bf16"], fig["dice_fp32"] = e16.get("dice_mean"), e32.get("dice_mean")
                fig["dice_bf16_minus_fp32_points"] = 100 * (fig["dice_bf16"] - fig["dice_fp32"])
        if bf16 is not None:
            vol = self.full_volume()
            self.run("predict-full-volume", self.py(
                "-m", "fpn", "predict", "--model", bf16["run_dir"], "--input", str(vol),
                "--out", str(self.work / "pred"), "--mlflow", self.mlflow))
            t0 = time.perf_counter()
            try:
                members, sec = self.ensemble_seconds(bf16["run_dir"])
                fig["ensemble_members"], fig["ensemble_s_per_volume"] = members, sec
                fig["predict_shape"] = list(s.predict_shape)
                self.report.steps.append(Step("ensemble-timing", time.perf_counter() - t0, True))
            except Exception as exc:  # noqa: BLE001 - report and go on
                self.report.steps.append(Step("ensemble-timing", time.perf_counter() - t0, False,
                                              f"{type(exc).__name__}: {exc}"))
        self.search(pre["run_dir"])
        bare = self.bare_loop_crops_per_s()
        fig["bare_loop_crops_per_s"] = bare
        if bare and fig.get("ray_train_crops_per_s"):
            fig["ray_train_vs_bare_loop"] = fig["ray_train_crops_per_s"] / bare
        fig["total_s"] = time.perf_counter() - t_start
        return self.report


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "n/a" if v is None else format(v, spec)


def render(report: Report) -> str:
    f = report.figures
    lines = [f"device check: {report.device} ({report.card}), {report.started}", "",
             f"{'step':32s} {'result':8s} {'seconds':>8s}"]
    for st in report.steps:
        lines.append(f"{st.name:32s} {'ok' if st.ok else 'FAILED':8s} {st.seconds:8.1f}")
    goal = {"ray_train_vs_bare_loop": ">= 0.85", "dice_bf16_minus_fp32_points": "|x| <= 1",
            "busy_fraction": ">= 0.9"}
    lines += ["", f"{'figure':34s} {'value':>12s}  goal"]
    rows = [
        ("ray_train_crops_per_s", ".1f"), ("bare_loop_crops_per_s", ".1f"),
        ("ray_train_vs_bare_loop", ".2f"), ("compile_crops_per_s", ".1f"),
        ("compile_vs_eager", ".2f"), ("dice_bf16", ".4f"), ("dice_fp32", ".4f"),
        ("dice_bf16_minus_fp32_points", "+.2f"), ("busy_fraction", ".2f"),
        ("busy_loader_processes", "d"), ("peak_memory_mib", ".0f"), ("ensemble_members", "d"),
        ("ensemble_s_per_volume", ".3f"), ("total_s", ".0f"),
    ]
    for key, spec in rows:
        lines.append(f"{key:34s} {_fmt(f.get(key), spec):>12s}  {goal.get(key, '')}")
    if report.device == "cpu":
        lines.append("(cpu: toy sizes; the figures test the script, they measure nothing; "
                     "busy fraction and memory are the host's)")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--work", help="working folder (default: a new temporary one)")
    ap.add_argument("--out", default="device_check.txt",
                    help="report file (text); the figures go beside it as .json")
    args = ap.parse_args(argv)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("CUDA is not available: run with --device cpu on a CPU machine", file=sys.stderr)
            return 2
    checker = Checker(args)
    report = checker.check()
    text = render(report)
    print(text, flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(asdict(report), indent=1, default=str))
    print(f"[check] wrote {out} and {out.with_suffix('.json')} (work folder {checker.work})")
    return 0 if report.steps and all(st.ok for st in report.steps) else 1


if __name__ == "__main__":
    raise SystemExit(main())
