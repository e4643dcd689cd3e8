"""Learning curves on the demo phantom, before and after issue 25, through the real training path.

Question: does FPN learn on the main job's data, from scratch and pretrained on inverted FAF, at
ratios 0.1 and 1.0, with the old demo recipe ("before") and the new one ("after")? What does each
part of the change do: the BatchNorm statistics recomputed before validation (the gap between
train-mode and eval-mode Dice on training crops), a fresh head against the pretrained one
(``reinit_head``), foreground-aware crops?

Method: the demo store of ``python tune/search.py`` (``tune/presets.py``
``SEARCH_PRESETS["demo"].store``, the ``hard`` phantom, seed 0), made once in ``--workdir``. Every
run goes through :func:`fpn.training.driver.run_training` (local Ray, sqlite MLflow), as
``python -m fpn pretrain|finetune`` does, and is evaluated on the test split with its k-best
ensemble (:func:`fpn.evaluation.evaluate`), as the search evaluates its best trials. Per run:
the per-epoch validation score (Dice pooled over the validation split's pixels, and the mean of
per-visit Dice), the test Dice (mean ± sd over visits, n patients and visits), predicted against
graded GA area (Bland-Altman bias, r^2), the train-mode minus eval-mode Dice on 8 batches of
training crops (the best checkpoint), the optimizer steps, and the run's wall time and CPU time
(every process of this one's tree: the driver, Ray and its workers, read from ``/proc``; Linux).

- ``before``: the demo recipe as it was (cpu-small before issue 25): FPN width 1.0, 16 x 64
  crops, batch 4, 2 crops per visit raised to at least 48 crops an epoch, 3 fine-tuning epochs;
  fine-tuning with SGD at lr 2e-3 (the middle of the demo space's AdamW range, which SGD then
  ran), pretraining (4 epochs) with SGD at lr 0.1; the mean of per-visit Dice selects the
  checkpoints; no BatchNorm recompute; head bias 0; uniform crops.
- ``after``: the ``cpu-small`` recipe as shipped (``fpn/recipes/cpu-small.yaml``) with
  ``--epochs``/``--pretrain-epochs`` (the demo preset's by default).
- ablations (``--ablations``), each one switch away from ``after``: the pretrained arm with
  ``reinit_head`` flipped, the scratch arm without foreground crops (or with a third, whichever
  ``after`` does not use), the scratch arm without the BatchNorm recompute and with the head's
  prior flipped; and the train/eval gap after a short run: the scratch arm for one epoch, with
  and without the recompute.

Results are kept per run in ``WORKDIR/results/*.json`` (a re-run only trains what is missing);
the table goes to stdout, the plot to ``--plot``.

    python benchmarks/learning_curves.py --workdir /tmp/lc/bench --ablations
"""

from __future__ import annotations

import argparse
import json
import math
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Self

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

RATIOS = (0.1, 1.0)
ARMS = ("scratch", "pretrained")

#: the demo recipe before issue 25 (fpn/recipes/cpu-small.yaml as it was) and the trial values
#: the main job drew around: the default loss balance and weight decay, the reference blocks
BEFORE: dict[str, Any] = {
    "data.crop": [16, 64], "data.multiplier": 2, "data.loader_workers": 0, "batch_size": 4,
    "keep_best": 2, "overlay_every": 0, "model.kwargs": {}, "optim.name": "sgd",
    "steps_per_epoch": None, "selection": "mean_dice", "bn_recompute_batches": 0,
    "head_prior": False, "data.foreground_fraction": 0.0, "reinit_head": False,
}
BEFORE_FINETUNE_LR = 2e-3  #: SGD at the demo space's AdamW learning rates
BEFORE_PRETRAIN_LR = 0.1  #: the old pretraining: SGD at TrainConfig's default
BEFORE_EPOCHS, BEFORE_PRETRAIN_EPOCHS = 3, 4
BEFORE_MIN_CROPS = 48  #: the demo preset's crops floor


# -- CPU time of this process tree ----------------------------------------------------------------

def _proc_table() -> dict[int, tuple[int, float]]:
    """``{pid: (ppid, user + system CPU seconds)}`` of every process (``/proc``)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    return out


class TreeCpu:
    """CPU seconds used by this process and its descendants (Ray's raylet, its workers) while
    the block runs: sampled every ``every`` seconds, so that processes that end in between (a
    run's Train workers) count up to their last sample."""

    def __init__(self, every: float = 0.5):
        self.every, self.seen, self._stop = every, {}, threading.Event()
        self.start_cpu: dict[int, float] = {}

    def _tree(self) -> dict[int, float]:
        table, root = _proc_table(), os.getpid()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        out, todo = {}, [root]
        while todo:
            pid = todo.pop()
            if pid in table:
                out[pid] = table[pid][1]
            todo += children.get(pid, [])
        return out

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.seen.update(self._tree())

    def __enter__(self) -> Self:
        self.start_cpu = self._tree()
        self.seen = dict(self.start_cpu)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.seen.update(self._tree())

    @property
    def seconds(self) -> float:
        return sum(v - self.start_cpu.get(pid, 0.0) for pid, v in self.seen.items())


# -- the runs --------------------------------------------------------------------------------------

@dataclass
class Outcome:
    """One run: what it was, its curves, its test evaluation and its cost."""

    label: str
    behaviour: str
    arm: str
    ratio: float
    run_dir: str
    score_name: str
    val_score: list[float]  #: the selection score per epoch (what picked the checkpoints)
    val_pooled: list[float]  #: Dice pooled over the validation split's pixels, per epoch
    val_mean: list[float]  #: the mean of per-visit validation Dice, per epoch
    steps: list[float]  #: optimizer steps per epoch
    test: dict[str, float] = field(default_factory=dict)
    test_visits: list[dict[str, Any]] = field(default_factory=list)
    gap: dict[str, float] = field(default_factory=dict)  #: train- and eval-mode Dice
    wall_s: float = math.nan
    cpu_s: float = math.nan
    train_visits: int = 0
    train_patients: int = 0


def _history(uri: str, run_id: str, key: str) -> list[float]:
    from fpn.tracking import client_for

    points = client_for(uri).get_metric_history(run_id, key)
    return [p.value for p in sorted(points, key=lambda p: p.step)]


def mode_gap(run_dir: str, cfg: Any, batches: int = 8) -> dict[str, float]:
    """Dice of the run's best checkpoint on ``batches`` batches of its epoch-0 training crops,
    thresholded at 0.5, pooled over the crops: in train mode (batch statistics) and in eval mode
    (the checkpoint's running statistics)."""
    import torch
    from torch.utils.data import DataLoader

    from fpn.data.dataset import CropDataset
    from fpn.data.splits import plan_visits
    from fpn.data.store import open_store
    from fpn.inference import load_ensemble

    member = load_ensemble(run_dir, cfg.tracking_uri(), 1, device="cpu").models[0]
    store = open_store(cfg.data.store)
    plan = plan_visits(store, "mask", cfg.data.ratio, cfg.data.subset_seed)
    crops = CropDataset(cfg.data, plan.train_keys, seed=cfg.seed,
                        length=batches * cfg.batch_size)
    loader = DataLoader(crops, batch_size=cfg.batch_size)
    state = {k: v.clone() for k, v in member.state_dict().items()}
    out = {}
    for mode in ("train", "eval"):
        member.train(mode == "train")
        inter = total = 0
        with torch.no_grad():
            for x, y in loader:
                p = torch.sigmoid(member(x)) >= 0.5
                t = y >= 0.5
                inter += int((p & t).sum())
                total += int(p.sum() + t.sum())
        member.load_state_dict(state)  # a train-mode forward moves the running statistics
        out[mode] = 2 * inter / total if total else 1.0
    member.eval()
    return out


def run_one(label: str, behaviour: str, arm: str, ratio: float, cfg: Any,
            results: Path) -> Outcome:
    """Train (or find) one run, evaluate it on the test split, keep its outcome as JSON."""
    import csv

    from fpn.evaluation import evaluate
    from fpn.training.driver import run_training

    path = results / f"{label}.json"
    if path.is_file():
        return Outcome(**json.loads(path.read_text()))
    print(f"[curves] {label}: training", flush=True)
    t0 = time.perf_counter()
    with TreeCpu() as cpu:
        record = run_training(cfg)
    wall = time.perf_counter() - t0
    uri = cfg.tracking_uri()
    out = Outcome(label=label, behaviour=behaviour, arm=arm, ratio=ratio,
                  run_dir=record.run_dir, score_name=record.score_name,
                  val_score=_history(uri, record.mlflow_run_id, "val_score"),
                  val_pooled=_history(uri, record.mlflow_run_id, "val/dice_pooled"),
                  val_mean=_history(uri, record.mlflow_run_id, "val/dice_mean"),
                  steps=_history(uri, record.mlflow_run_id, "train/steps"),
                  wall_s=wall, cpu_s=cpu.seconds, train_patients=len(record.train_patients))
    if cfg.is_ssl:
        out.val_score = _history(uri, record.mlflow_run_id, "val/ssim_mean")
    else:
        summary = evaluate(record.run_dir, cfg.data.store, split="test", tracking_uri=uri)
        out.test = {k: float(v) for k, v in summary.items() if isinstance(v, (int, float))}
        with open(summary["csv"], newline="") as fh:
            out.test_visits = [{k: (v if k in ("visit", "patient_id", "eye") else float(v))
                                for k, v in row.items() if k in (
                                    "visit", "patient_id", "eye", "dice", "area_pred_mm2",
                                    "area_true_mm2")} for row in csv.DictReader(fh)]
        out.gap = mode_gap(record.run_dir, cfg)
    from fpn.data.splits import plan_visits
    from fpn.data.store import open_store

    out.train_visits = len(plan_visits(open_store(cfg.data.store), cfg.data.target,
                                       cfg.data.ratio, cfg.data.subset_seed).train_keys)
    results.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(out), indent=1))
    return out


def configs(store: str, work: Path, args: argparse.Namespace) -> dict[str, tuple[str, str, Any]]:
    """Every run's ``(behaviour, arm, TrainConfig)``, by label (pretrainings first)."""
    from fpn.config import build_train_config
    from fpn.data.splits import plan_visits
    from fpn.data.store import open_store

    where = {"data.store": store, "model.name": "fpn", "workers": 1, "cpus_per_worker": 1.0,
             "threads_per_worker": 1, "storage": str(work / "runs"),
             "mlflow": f"sqlite:///{work / 'mlflow.db'}", "experiment": "learning-curves",
             "log_model": False, "seed": 0}
    opened = open_store(store)
    out: dict[str, tuple[str, str, Any]] = {}

    def before(task: str, **over: Any) -> Any:
        target = "inverted_faf" if task == "pretrain" else "mask"
        return build_train_config("reference", where, BEFORE, {"task": task,
                                                               "data.target": target}, over)

    def after(task: str, **over: Any) -> Any:
        target = "inverted_faf" if task == "pretrain" else "mask"
        epochs = args.pretrain_epochs if task == "pretrain" else args.epochs
        return build_train_config("cpu-small", where, {"task": task, "data.target": target,
                                                       "epochs": epochs}, over)

    out["before-pretrain"] = ("before", "pretrain", before(
        "pretrain", epochs=BEFORE_PRETRAIN_EPOCHS, run_name="before-pretrain",
        **{"optim.lr": BEFORE_PRETRAIN_LR}))
    out["after-pretrain"] = ("after", "pretrain", after("pretrain", run_name="after-pretrain"))
    for ratio in RATIOS:
        visits = len(plan_visits(opened, "mask", ratio, 0).train_keys)
        multiplier = max(2, math.ceil(BEFORE_MIN_CROPS / visits))
        for arm in ARMS:
            name = f"{arm}-r{ratio:g}"
            for b in ("before", "after"):
                init = ({"init": str(work / "runs" / f"{b}-pretrain")} if arm == "pretrained"
                        else {})
                label = f"{b}-{name}"
                if b == "before":
                    cfg = before("finetune", epochs=BEFORE_EPOCHS, run_name=label, **init,
                                 **{"data.ratio": ratio, "data.multiplier": multiplier,
                                    "optim.lr": BEFORE_FINETUNE_LR})
                else:
                    cfg = after("finetune", run_name=label, **init, **{"data.ratio": ratio})
                out[label] = (b, arm, cfg)
            if not args.ablations:
                continue
            base = out[f"after-{name}"][2]
            if arm == "pretrained":
                flip = not base.reinit_head
                out[f"ablation-reinit_head={flip}-{name}"] = ("ablation", arm, base.with_overrides(
                    {"reinit_head": flip, "run_name": f"ablation-reinit-{name}"}))
            else:
                fg = 0.0 if base.data.foreground_fraction > 0 else round(1 / 3, 4)
                out[f"ablation-foreground={fg:g}-{name}"] = ("ablation", arm, base.with_overrides(
                    {"data.foreground_fraction": fg, "run_name": f"ablation-fg-{name}"}))
                out[f"ablation-bn_recompute=0-{name}"] = ("ablation", arm, base.with_overrides(
                    {"bn_recompute_batches": 0, "run_name": f"ablation-bn-{name}"}))
                out[f"ablation-head_prior={not base.head_prior}-{name}"] = (
                    "ablation", arm, base.with_overrides({"head_prior": not base.head_prior,
                                                          "run_name": f"ablation-prior-{name}"}))
                # the train/eval gap after a short run: one epoch, with and without the recompute
                for batches in sorted({0, base.bn_recompute_batches}):
                    out[f"short-bn_recompute={batches}-{name}"] = ("short", arm, base.with_overrides(
                        {"bn_recompute_batches": batches, "epochs": 1,
                         "run_name": f"short-bn{batches}-{name}"}))
    return out


# -- the table and the plot ------------------------------------------------------------------------

def _pct(x: float) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:.1f}"


def table(outcomes: list[Outcome]) -> str:
    """One line per run; the test columns are over the test split's patients (the unit: a
    patient's visits are not independent), with the visits' mean beside them."""
    header = ("| run | train patients / visits | steps | validation pooled Dice per epoch | "
              "test Dice, patient mean [95% CI] | test Dice, visit mean ± sd | "
              "area bias [limits of agreement] mm² | area ICC | train − eval Dice | wall s | "
              "CPU s |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|---|"]
    n_test = ""
    for o in outcomes:
        start = f"| {o.label} | {o.train_patients} / {o.train_visits} | {int(sum(o.steps))} | "
        if o.arm == "pretrain":
            lines.append(start + "SSIM " + ", ".join(f"{v:.3f}" for v in o.val_score)
                         + f" | | | | | | {o.wall_s:.0f} | {o.cpu_s:.0f} |")
            continue
        t = o.test
        n_test = f"{t.get('patients', math.nan):.0f} patients, {t.get('visits', math.nan):.0f} visits"
        gap = o.gap.get("train", math.nan) - o.gap.get("eval", math.nan)
        lines.append(
            start + ", ".join(_pct(v) for v in o.val_pooled) + " | "
            f"{_pct(t.get('dice_patient_mean', math.nan))} "
            f"[{_pct(t.get('dice_patient_ci_low', math.nan))}, "
            f"{_pct(t.get('dice_patient_ci_high', math.nan))}] | "
            f"{_pct(t.get('dice_mean', math.nan))} ± {_pct(t.get('dice_std', math.nan))} | "
            f"{t.get('area_bias_mm2', math.nan):+.2f} [{t.get('area_loa_low_mm2', math.nan):+.2f}, "
            f"{t.get('area_loa_high_mm2', math.nan):+.2f}] | {t.get('area_icc', math.nan):.2f} | "
            f"{_pct(o.gap.get('train', math.nan))} − {_pct(o.gap.get('eval', math.nan))} = "
            f"{_pct(gap)} | {o.wall_s:.0f} | {o.cpu_s:.0f} |")
    if n_test:
        lines.append(f"\nTest split: {n_test}; Dice in %.")
    return "\n".join(lines)


def plot(outcomes: list[Outcome], path: Path) -> Path:
    """Top row: per-epoch validation Dice of each (arm, ratio), before (red) and after (blue);
    bottom row: predicted against graded GA area of the test visits, the same runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {o.label: o for o in outcomes}
    colours = {"before": "tab:red", "after": "tab:blue"}
    pairs = [(a, r) for a in ARMS for r in RATIOS]
    fig, axes = plt.subplots(2, len(pairs), figsize=(4.2 * len(pairs), 8))
    shown = [by[f"{b}-{a}-r{r:g}"] for a, r in pairs for b in colours
             if f"{b}-{a}-r{r:g}" in by]
    top = 1.05 * max([v for o in shown for t in o.test_visits
                      for v in (t["area_true_mm2"], t["area_pred_mm2"])] or [1.0])
    for col, (arm, ratio) in enumerate(pairs):
        curve, scatter = axes[0, col], axes[1, col]
        for b in ("before", "after"):
            o = by.get(f"{b}-{arm}-r{ratio:g}")
            if o is None:
                continue
            steps = _cumulative(o.steps)
            curve.plot(steps, [100 * v for v in o.val_pooled], "o-", color=colours[b],
                       label=f"{b}: Dice pooled over pixels")
            curve.plot(steps, [100 * v for v in o.val_mean], "x--", color=colours[b], alpha=0.6,
                       label=f"{b}: mean of per-visit Dice")
            scatter.scatter([t["area_true_mm2"] for t in o.test_visits],
                            [t["area_pred_mm2"] for t in o.test_visits], color=colours[b],
                            alpha=0.7, label=f"{b}: test Dice {100 * o.test['dice_mean']:.1f}")
        curve.set_title(f"FPN {arm}, ratio {ratio:g}: validation")
        curve.set_xlabel("fine-tuning optimizer steps")
        curve.set_ylim(-2, 100)
        curve.grid(alpha=0.3)
        curve.legend(fontsize=7, loc="lower right")
        scatter.plot([0, top], [0, top], "k:", lw=1)
        scatter.set_title(f"FPN {arm}, ratio {ratio:g}: test areas")
        scatter.set_xlabel("graded GA area (mm²)")
        scatter.grid(alpha=0.3)
        scatter.legend(fontsize=7, loc="upper left")
    axes[0, 0].set_ylabel("validation Dice (%)")
    axes[1, 0].set_ylabel("predicted GA area (mm²)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _cumulative(steps: list[float]) -> list[float]:
    total, out = 0.0, []
    for s in steps:
        total += s
        out.append(total)
    return out


def main(argv: list[str] | None = None) -> int:
    from tune.presets import SEARCH_PRESETS

    demo = SEARCH_PRESETS["demo"]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="learning-curves", help="store, runs, MLflow, results")
    ap.add_argument("--epochs", type=int, default=demo.epochs,
                    help="fine-tuning epochs of 'after' (default: the demo preset's, %(default)s)")
    ap.add_argument("--pretrain-epochs", type=int,
                    default=demo.pretraining_epochs(demo.epochs),
                    help="pretraining epochs of 'after' (default: the demo preset's, "
                    "%(default)s)")
    ap.add_argument("--ablations", action="store_true", help="also the one-switch ablations")
    ap.add_argument("--only", nargs="*", help="train only these labels (the table shows all "
                    "results there are)")
    ap.add_argument("--plot", default="docs/img/learning_curves.png")
    args = ap.parse_args(argv)

    from fpn.training.ray_connect import connect_ray
    from tune.core import make_synthetic_store

    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    store = make_synthetic_store(work / "data", demo.store, seed=0, num_cpus=2)
    connect_ray(num_cpus=2, log_to_driver=False)
    results = work / "results"
    outcomes = []
    for label, (behaviour, arm, cfg) in configs(store, work, args).items():
        if args.only and label not in args.only and not (results / f"{label}.json").is_file():
            continue
        outcomes.append(run_one(label, behaviour, arm, cfg.data.ratio, cfg, results))
    print(table(outcomes))
    if any(o.behaviour in ("before", "after") and o.arm in ARMS for o in outcomes):
        print(f"plot: {plot(outcomes, Path(args.plot))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
