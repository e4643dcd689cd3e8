"""``train_fn_per_worker``: what every Ray Train worker runs.

Each worker opens the store itself, reads its own shard of random crops (a DistributedSampler),
trains a DDP replica, validates its shard of whole volumes, and all workers merge the per-visit
metrics. Rank 0 writes the checkpoint (``model.pt``, an ensemble member, plus ``train_state.pt``)
and logs the epoch to MLflow *after* Ray has persisted the checkpoint, so that a restart from the
last checkpoint never logs an epoch twice; on a restart it back-fills any epoch the checkpoint
holds that MLflow lacks.

The training state (optimiser, scheduler, RNG, history, the ``--init`` parameter names, epoch
and step) holds tensors and builtins only and is read with ``torch.load(weights_only=True)``:
storage every worker may write never gets to run code in another. With
``checkpoint_every_steps`` (or on a stop request: SIGTERM or a spot notice, see
:mod:`fpn.training.interruption`) rank 0 also writes a mid-epoch checkpoint,
``step_checkpoint.pt`` in the run directory, after every N optimizer steps; a restart resumes from
it when it is newer than Ray's last epoch checkpoint, skipping the steps already taken, so a lost
node costs at most N steps.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from fpn.config import TrainConfig
from fpn.data.dataset import CropDataset, VolumeDataset
from fpn.data.splits import plan_visits
from fpn.data.store import open_store
from fpn.device import DevicePolicy, device_policy
from fpn.losses import build_loss
from fpn.storage import (
    MODEL_FILE,
    append_location_line,
    join_location,
    load_member_file,
    location_exists,
    read_location_bytes,
    save_member,
    write_location_bytes,
    write_location_text,
)
from fpn.tags import VAL_SCORE
from fpn.training.batchnorm import recompute_batchnorm
from fpn.training.budget import crops_per_epoch
from fpn.training.interruption import (
    SpotNoticePoller,
    StopRequest,
    TrainingInterrupted,
    install_sigterm_handler,
    spot_notice_url,
)
from fpn.training.loop import build_optimizer, build_scheduler, train_epoch, validate
from fpn.training.priors import ga_fraction, wants_head_prior

__all__ = [
    "STATE_FILE",
    "STEP_CHECKPOINT_FILE",
    "EpochOutcome",
    "RestoredState",
    "WorkerData",
    "build_loaders",
    "build_optimisation",
    "checkpoint_and_report",
    "epoch_metrics",
    "load_train_state",
    "log_epoch",
    "restore_state",
    "save_train_state",
    "score_name",
    "set_head_prior",
    "settle_batchnorm",
    "step_fault_drill",
    "train_fn_per_worker",
    "train_state",
    "train_then_validate",
]

STATE_FILE = "train_state.pt"
#: the mid-epoch checkpoint in the run directory (model weights and training state, one file)
STEP_CHECKPOINT_FILE = "step_checkpoint.pt"


def train_state(epoch: int, step: int, restored: RestoredState, opt: torch.optim.Optimizer,
                sched: Any, world: int, partial: tuple[float, int] = (0.0, 0)) -> dict[str, Any]:
    """The training state as tensors and builtins only (``weights_only=True`` loads it).
    ``step``: optimizer steps done in ``epoch`` (0: the epoch is complete)."""
    return {"epoch": int(epoch), "step": int(step), "world_size": int(world),
            "history": [{k: float(v) for k, v in h.items()} for h in restored.history],
            "pretrained": sorted(restored.pretrained),
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "partial": [float(partial[0]), int(partial[1])]}


def save_train_state(state: dict[str, Any], location: str | Path) -> None:
    """Write a training state (or a step checkpoint) to a path or URL, whole or not at all."""
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    write_location_bytes(str(location).removeprefix("file://"), buf.getvalue())


def load_train_state(location: str | Path) -> dict[str, Any] | None:
    """A training state written by :func:`save_train_state`, loaded with ``weights_only=True``
    (never unpickling code); None when there is none."""
    import io

    data = read_location_bytes(str(location).removeprefix("file://"))
    if data is None:
        return None
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def score_name(cfg: TrainConfig) -> str:
    """The validation metric that ranks checkpoints, trials and ASHA's stops (``cfg.selection``):
    Dice pooled over the split's pixels (an empty prediction scores 0 where the split has GA) or
    the mean of per-visit Dice (the reference); SSIM when pretraining."""
    if cfg.is_ssl:
        return "val/ssim_mean"
    return "val/dice_pooled" if cfg.selection == "pooled_dice" else "val/dice_mean"


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _gather(obj: Any, world: int) -> list[Any]:
    if world == 1 or not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _fmt_eta(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


@dataclass
class RestoredState:
    """Where a worker starts: epoch, the history so far, the weights loaded from ``--init``, and
    the optimiser/scheduler/RNG state of a Ray checkpoint (None for a fresh run)."""

    start_epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    pretrained: set[str] = field(default_factory=set)
    train_state: dict[str, Any] | None = None
    #: optimizer steps of ``start_epoch`` already taken (a mid-epoch checkpoint), and their
    #: loss sum and crop count
    start_step: int = 0
    partial: tuple[float, int] = (0.0, 0)


@dataclass
class WorkerData:
    """This worker's shard of training crops and of validation volumes."""

    crops: CropDataset
    sampler: DistributedSampler
    loader: DataLoader
    val_loader: DataLoader
    spacings: dict[str, tuple[float, float]]
    overlay_keys: list[str]


def restore_state(model: torch.nn.Module, cfg: TrainConfig, init_member: Any,
                  run_dir: str | None = None, world: int = 1) -> RestoredState:
    """Load the weights a worker starts from: a mid-epoch step checkpoint newer than Ray's last
    checkpoint wins over that checkpoint (a restart or a resumed run), which wins over ``--init``
    (``init_member``: an ObjectRef to a member payload, or a file path)."""
    import ray
    import ray.train

    from fpn.models import load_pretrained

    restored: RestoredState | None = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            model.load_state_dict(load_member_file(Path(d) / MODEL_FILE)["state_dict"])
            state = load_train_state(Path(d) / STATE_FILE)
        restored = RestoredState(start_epoch=state["epoch"] + 1, history=state["history"],
                                 pretrained=set(state["pretrained"]), train_state=state)
    step = load_train_state(join_location(run_dir, STEP_CHECKPOINT_FILE)) if run_dir else None
    start_epoch = restored.start_epoch if restored else 0
    # only a checkpoint taken within the epoch that comes next, by as many workers (the shards
    # it skips depend on the world size); an older one is superseded by the epoch's checkpoint
    if (step is not None and step["epoch"] == start_epoch and step["step"] > 0
            and step["world_size"] == world and start_epoch < cfg.epochs):
        model.load_state_dict(step["state_dict"])
        loss_sum, crops = step.get("partial", [0.0, 0])
        return RestoredState(start_epoch=start_epoch, history=step["history"],
                             pretrained=set(step["pretrained"]), train_state=step,
                             start_step=int(step["step"]), partial=(float(loss_sum), int(crops)))
    if restored is not None:
        return restored
    if init_member is not None:
        payload = (ray.get(init_member) if isinstance(init_member, ray.ObjectRef)
                   else load_member_file(init_member))
        loaded = load_pretrained(model, payload["state_dict"], reinit_head=cfg.reinit_head)
        return RestoredState(pretrained=set(loaded))
    return RestoredState()


def build_optimisation(model: torch.nn.Module, cfg: TrainConfig, restored: RestoredState
                       ) -> tuple[torch.optim.Optimizer, Any]:
    """Optimiser and schedule, with their state (and the RNG's) from a checkpoint when resuming."""
    opt = build_optimizer(model, cfg.optim, restored.pretrained)
    sched = build_scheduler(opt, cfg.optim, cfg.epochs)
    if restored.train_state is not None:
        opt.load_state_dict(restored.train_state["optimizer"])
        sched.load_state_dict(restored.train_state["scheduler"])
        torch.set_rng_state(restored.train_state["torch_rng"])
    return opt, sched


def build_loaders(cfg: TrainConfig, plan: Any, store: Any, rank: int, world: int,
                  policy: DevicePolicy) -> WorkerData:
    """This worker's DataLoaders. Each loader process opens its own store handle (see
    :class:`fpn.data.dataset.CropDataset`), so object stores work with any ``loader_workers``."""
    crops = CropDataset(cfg.data, plan.train_keys, seed=cfg.seed,
                        length=crops_per_epoch(cfg, len(plan.train_keys), world))
    sampler = DistributedSampler(crops, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)
    loader = DataLoader(crops, batch_size=cfg.batch_size, sampler=sampler,
                        num_workers=cfg.data.loader_workers, persistent_workers=False,
                        pin_memory=policy.pin_memory, drop_last=len(sampler) >= cfg.batch_size)
    val_keys = plan.val_keys[rank::world]
    val_loader = DataLoader(VolumeDataset(cfg.data, val_keys), batch_size=1,
                            num_workers=min(1, cfg.data.loader_workers),
                            pin_memory=policy.pin_memory)
    spacings = {k: (store.visit(k).spacing_mm[0], store.visit(k).spacing_mm[2]) for k in val_keys}
    return WorkerData(crops, sampler, loader, val_loader, spacings,
                      overlay_keys=val_keys[:2] if rank == 0 else [])


def epoch_metrics(epoch: int, train: dict[str, float], val: Any, lr: float, world: int,
                  score_key: str) -> dict[str, float]:
    """Every worker's training figures and validation records merged into one epoch's metrics."""
    parts = _gather((val.records, train), world)
    val.merge([p[0] for p in parts])
    crops_total = sum(p[1]["crops"] for p in parts)
    seconds = max(p[1]["seconds"] for p in parts)
    metrics: dict[str, float] = {
        "epoch": float(epoch),
        "train/loss": float(np.mean([p[1]["loss"] for p in parts])),
        # optimizer steps per worker (DDP steps together): the budget as it was spent
        "train/steps": float(max(p[1].get("steps", 0.0) for p in parts)),
        "train/crops_per_s": crops_total / max(seconds, 1e-9),
        "train/lr": lr,
        **{f"val/{k}": v for k, v in val.aggregate().items()},
    }
    metrics[VAL_SCORE] = float(metrics.get(score_key, float("nan")))
    return metrics


def set_head_prior(model: torch.nn.Module, cfg: TrainConfig, store: Any, plan: Any,
                   restored: RestoredState) -> float | None:
    """A fresh head's output bias at the logit of the training visits' GA fraction
    (:func:`fpn.training.priors.wants_head_prior` says when); returns the bias, None when
    unchanged."""
    from fpn.models.head import set_output_prior

    resumed = restored.train_state is not None or restored.start_epoch > 0
    if not wants_head_prior(cfg, resumed):
        return None
    return set_output_prior(model, ga_fraction(store, plan.train_keys))


def settle_batchnorm(net: torch.nn.Module, data: WorkerData, cfg: TrainConfig,
                     device: torch.device, policy: DevicePolicy) -> int:
    """BatchNorm's running statistics recomputed on ``cfg.bn_recompute_batches`` batches of this
    epoch's training crops and averaged over the workers (:mod:`fpn.training.batchnorm`), so
    that validation and the checkpoint see settled statistics; returns the batches used."""
    if cfg.bn_recompute_batches <= 0:
        return 0
    inputs = (policy.prepare_input(oct_crop, device) for oct_crop, _ in data.loader)
    return recompute_batchnorm(net, inputs, cfg.bn_recompute_batches)


@dataclass
class EpochOutcome:
    """One epoch of one worker: its training figures, its validation records and overlays'
    probabilities, the epoch's learning rate and the batches BatchNorm was settled on."""

    train: dict[str, float]
    val: Any
    probs: dict[str, np.ndarray]
    lr: float
    bn_batches: int


def train_then_validate(step_model: torch.nn.Module, net: torch.nn.Module, data: WorkerData,
                        loss_fn: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any,
                        device: torch.device, cfg: TrainConfig, policy: DevicePolicy, *,
                        start_step: int = 0, partial: tuple[float, int] = (0.0, 0),
                        after_step: Any = None) -> EpochOutcome:
    """One epoch: train ``step_model`` (the DDP replica) on this worker's crops, step the
    schedule, settle ``net``'s BatchNorm statistics (:func:`settle_batchnorm`), then validate
    ``net`` (the unwrapped network, what rank 0 checkpoints) on this worker's visits."""
    tr = train_epoch(step_model, data.loader, loss_fn, opt, device, cfg, policy,
                     start_step=start_step, partial=partial, after_step=after_step)
    lr = opt.param_groups[0]["lr"]
    sched.step()
    bn_batches = settle_batchnorm(net, data, cfg, device, policy)
    val, probs = validate(net, data.val_loader, device, cfg, data.spacings, data.overlay_keys,
                          policy)
    return EpochOutcome(tr, val, probs, lr, bn_batches)


def checkpoint_and_report(epoch: int, metrics: dict[str, float], net: torch.nn.Module,
                          cfg: TrainConfig, opt: torch.optim.Optimizer, sched: Any,
                          restored: RestoredState, rank: int, world: int = 1) -> None:
    """Rank 0 writes the member file and the training state; every worker reports the epoch."""
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = None
        if rank == 0:
            save_member(Path(tmp) / MODEL_FILE, net, model_name=cfg.model.name,
                        model_kwargs={"in_channels": 1, "out_channels": 1, **cfg.model.kwargs},
                        target=cfg.data.target, zscore_eps=cfg.data.zscore_eps,
                        extra={"epoch": epoch, VAL_SCORE: metrics[VAL_SCORE]})
            save_train_state(train_state(epoch, 0, restored, opt, sched, world),
                             Path(tmp) / STATE_FILE)
            ckpt = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=f"epoch_{epoch:04d}")


def log_epoch(logger: Any, store: Any, probs: dict[str, np.ndarray], metrics: dict[str, float],
              cfg: TrainConfig, epoch: int, start_epoch: int, t_start: float) -> None:
    """Rank 0, after Ray persisted the checkpoint: MLflow metrics, overlays, one progress line."""
    logger.log_epoch(epoch, metrics, probe_key="train/loss")
    if cfg.overlay_every and (epoch + 1) % cfg.overlay_every == 0 or epoch + 1 == cfg.epochs:
        _log_overlays(logger, store, probs, cfg, epoch)
    done = epoch + 1 - start_epoch
    eta = (time.perf_counter() - t_start) / done * (cfg.epochs - epoch - 1)
    val_txt = "  ".join(
        f"{k[4:-5]} {metrics[k]:.3f}±{metrics.get(k[:-5] + '_std', 0):.3f}"
        for k in metrics if k in ("val/dice_mean", "val/hd95_mean", "val/ssim_mean"))
    pooled = (f"  pooled dice {metrics['val/dice_pooled']:.3f}"
              if "val/dice_pooled" in metrics else "")
    print(f"[fpn] epoch {epoch + 1}/{cfg.epochs}  loss {metrics['train/loss']:.4f}  "
          f"{val_txt}{pooled}  {metrics['train/crops_per_s']:.1f} crops/s  "
          f"ETA {_fmt_eta(eta)}", flush=True)


def train_fn_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point. ``loop_config``: ``config`` (a TrainConfig dump), ``tracking_uri``,
    ``mlflow_run_id``, ``init_member`` (a member file for fine-tuning, resolved by the driver),
    ``run_dir`` (this run's storage folder, a path or a URL: ``attempts.jsonl`` and the
    fault-drill marker)."""
    import ray.train
    import ray.train.torch

    from fpn.models import create_model

    cfg = TrainConfig.model_validate(loop_config["config"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    # one intra-op thread per CPU the worker holds (the optimised FPN gains most from 2+)
    torch.set_num_threads(cfg.threads_per_worker or max(1, int(cfg.cpus_per_worker)))
    _seed_everything(cfg.seed)  # same initial weights everywhere; DDP broadcasts rank 0's anyway
    device = ray.train.torch.get_device()
    policy = device_policy(device.type, cfg)

    store = open_store(cfg.data.store, storage_options=cfg.data.storage_options)
    plan = plan_visits(store, cfg.data.target, cfg.data.ratio, cfg.data.subset_seed)
    model = create_model(cfg.model.name, in_channels=1, out_channels=1, **cfg.model.kwargs)
    run_dir = loop_config.get("run_dir")
    restored = restore_state(model, cfg, loop_config.get("init_member"), run_dir, world)
    head_bias = set_head_prior(model, cfg, store, plan, restored)
    model = policy.prepare_model(model, device)
    opt, sched = build_optimisation(model, cfg, restored)
    ddp_model = ray.train.torch.prepare_model(model, move_to_device=False)
    net = ddp_model.module if hasattr(ddp_model, "module") else ddp_model
    step_model = policy.wrap_for_training(ddp_model)
    data = build_loaders(cfg, plan, store, rank, world, policy)
    loss_fn = build_loss(cfg.loss, cfg.is_ssl)
    score_key = score_name(cfg)
    start_epoch = restored.start_epoch

    logger = None
    if rank == 0:  # only rank 0 logs: the other ranks never import MLflow (2-3 s of CPU each)
        from fpn.tracking import RunLogger

        logger = RunLogger(loop_config["tracking_uri"], loop_config["mlflow_run_id"])
    if logger is not None:
        for past in restored.history:  # back-fill what a crash between checkpoint and logging lost
            logger.log_epoch(int(past["epoch"]), past, probe_key="train/loss")
        if restored.start_step:
            print(f"[fpn] resumed from the step checkpoint of epoch {start_epoch}, step "
                  f"{restored.start_step}", flush=True)
        elif start_epoch:
            print(f"[fpn] resumed from the checkpoint of epoch {start_epoch - 1}", flush=True)
        print(f"[fpn] {cfg.task} {cfg.model.name} target={cfg.data.target} "
              f"train visits={len(plan.train_keys)} patients={len(plan.train_patients)} "
              f"val visits={len(plan.val_keys)} workers={world} device={device}"
              f"{' compile=on' if policy.compile else ''}"
              f"{f' head bias={head_bias:.2f}' if head_bias is not None else ''}", flush=True)
    if rank == 0 and run_dir:
        # one line per (re)start: what a fault drill reads to count repeated epochs and steps
        append_location_line(join_location(run_dir, "attempts.jsonl"),
                             json.dumps({"start_epoch": start_epoch,
                                         "start_step": restored.start_step, "time": time.time(),
                                         "world_size": world}))

    stop = StopRequest()
    install_sigterm_handler(stop)  # where possible (the main thread); inside Ray: the poller
    url = spot_notice_url(cfg.spot_notice_url)
    poller = SpotNoticePoller(url, stop) if url else None
    if poller is not None:
        poller.start()
    t_start = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        data.crops.set_epoch(epoch)
        data.sampler.set_epoch(epoch)
        after_step = _step_hook(cfg, epoch, net, opt, sched, restored, rank, world, device,
                                run_dir, stop)
        first = restored.start_step if epoch == start_epoch else 0
        partial = restored.partial if epoch == start_epoch else (0.0, 0)
        done = train_then_validate(step_model, net, data, loss_fn, opt, sched, device, cfg,
                                   policy, start_step=first, partial=partial,
                                   after_step=after_step)
        metrics = epoch_metrics(epoch, done.train, done.val, done.lr, world, score_key)
        restored.history.append(metrics)
        checkpoint_and_report(epoch, metrics, net, cfg, opt, sched, restored, rank, world)
        if logger is not None:
            log_epoch(logger, store, done.probs, metrics, cfg, epoch, start_epoch, t_start)
    if poller is not None:
        poller.halt()


def _stop_everywhere(stop: StopRequest, world: int, device: torch.device) -> bool:
    """Whether any worker has a stop request: all of them must stop at the same step (a DDP
    step is collective), so the flag is reduced across the group."""
    flag = stop.is_set()
    if world == 1 or not dist.is_initialized():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def _step_hook(cfg: TrainConfig, epoch: int, net: torch.nn.Module, opt: torch.optim.Optimizer,
               sched: Any, restored: RestoredState, rank: int, world: int,
               device: torch.device, run_dir: str | None, stop: StopRequest) -> Any:
    """What runs after each optimizer step: the mid-epoch checkpoint every
    ``checkpoint_every_steps`` and on a stop request (then :class:`TrainingInterrupted`), and
    the step fault drill."""
    every = cfg.checkpoint_every_steps

    def after_step(done: int, loss_sum: float, crops: int) -> None:
        stopping = _stop_everywhere(stop, world, device)
        if run_dir and (stopping or (every and done % every == 0)):
            if rank == 0:
                state = train_state(epoch, done, restored, opt, sched, world, (loss_sum, crops))
                state["state_dict"] = {k: v.detach().cpu() for k, v in net.state_dict().items()}
                save_train_state(state, join_location(run_dir, STEP_CHECKPOINT_FILE))
            if world > 1 and dist.is_initialized():
                dist.barrier()  # written before any worker goes on (or dies)
        step_fault_drill(cfg, epoch, done, rank, world, run_dir)
        if stopping:
            print(f"[fpn] worker {rank}: {stop.reason or 'stop requested by another worker'}; "
                  f"checkpointed epoch {epoch} step {done}, stopping", flush=True)
            raise TrainingInterrupted(f"stopped at epoch {epoch} step {done}: "
                                      f"{stop.reason or 'another worker'}")

    return after_step


def step_fault_drill(cfg: TrainConfig, epoch: int, done: int, rank: int, world: int,
                     run_dir: str | None) -> None:
    """Tests and drills only: the last worker dies once after ``cfg.fail_at_step`` steps of
    epoch ``cfg.fail_at_epoch`` (default 0)."""
    if (cfg.fail_at_step != done or (cfg.fail_at_epoch or 0) != epoch or rank != world - 1
            or not run_dir):
        return
    marker = join_location(run_dir, f".fault-drill-epoch{epoch}-step{done}")
    if location_exists(marker):
        return
    write_location_text(marker, "the step fault drill killed this worker once here\n")
    print(f"[fpn] fault drill: worker {rank} dies at epoch {epoch} step {done}", flush=True)
    os._exit(17)


def _log_overlays(logger: Any, store: Any, probs: dict[str, np.ndarray], cfg: TrainConfig,
                  epoch: int) -> None:
    from fpn.data.dataset import stored_name
    from fpn.data.transforms import target_from
    from fpn.training.overlays import enface_projection, save_overlay

    with tempfile.TemporaryDirectory() as tmp:
        for key, prob in probs.items():
            info = store.visit(key)
            name = stored_name(cfg.data.target)
            target = target_from(cfg.data.target, store.read(key, name)) if name in info.has else None
            out = save_overlay(Path(tmp) / f"epoch{epoch:03d}_{key}.png",
                               enface_projection(store.read(key, "oct")), prob, target,
                               ssl=cfg.is_ssl, title=f"{key}  epoch {epoch}",
                               spacing_sw=(info.spacing_mm[0], info.spacing_mm[2]))
            logger.log_file(out, "overlays")
