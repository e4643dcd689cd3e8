"""Training that learns from a handful of labels (issue 25), unit-tested without Ray: budgets in
optimizer steps, a selection score an empty mask cannot win, BatchNorm statistics recomputed
before validation (also averaged over DDP workers), the head's prior and foreground crops."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from fpn.config import TrainConfig, set_dotted
from fpn.data.splits import plan_visits
from fpn.data.store import open_store

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread, as a Train worker of one CPU has: two threads on a busy 2-core
    machine make a tiny network's step 50x slower (they spin for each other)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cfg(store: str, **over) -> TrainConfig:
    tree = {"task": "finetune",
            "data": {"store": store, "crop": [8, 32], "multiplier": 2, "loader_workers": 0},
            "model": {"name": "fpn", "kwargs": {"width": 0.25}},
            "optim": {"lr": 0.01}, "epochs": 1, "batch_size": 2}
    for k, v in over.items():
        set_dotted(tree, k, v)
    return TrainConfig.model_validate(tree)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """A store written with the writer primitives (no Ray: these are unit tests): 8 training
    patients of 2 visits (one visit without GA), one validation and one test patient, each
    GA a small rectangle."""
    from data_prep.sources import VisitArrays
    from data_prep.store_writer import Encoding, init_store, write_index, write_visit

    location = str(tmp_path_factory.mktemp("units") / "store.zarr")
    init_store(location)
    rng = np.random.default_rng(0)
    index, split = {}, {"train": [], "val": [], "test": []}
    for i in range(10):
        patient = f"P{i:02d}"
        split["train" if i < 8 else "val" if i == 8 else "test"].append(patient)
        for day in (0, 180):
            mask = np.zeros((8, 32), np.uint8)
            if (i, day) != (3, 0):
                s, w = rng.integers(0, 6), rng.integers(0, 26)
                mask[s:s + 2, w:w + 5] = 1
            arrays = VisitArrays(oct=rng.normal(0, 1, (8, 64, 32)).astype(np.float32),
                                 spacing_mm=(0.12, 0.0039, 0.0113), mask=mask)
            key = f"{patient}_OD_{day}"
            index[key] = write_visit(location, key, arrays, patient_id=patient, eye="OD",
                                     day=day, encoding=Encoding("float32"))
    write_index(location, index, split, "seeded:0", Encoding("float32"))
    return location


# -- budgets in optimizer steps ------------------------------------------------------------------

@pytest.mark.parametrize("ratio", [0.1, 1.0])
def test_the_steps_of_a_run_equal_its_budget_at_every_ratio(store, ratio):
    from fpn.device import device_policy
    from fpn.losses import build_loss
    from fpn.models import create_model
    from fpn.training.budget import steps_per_epoch
    from fpn.training.loop import build_optimizer, train_epoch
    from fpn.training.worker import build_loaders

    cfg = _cfg(store, steps_per_epoch=3, **{"data.ratio": ratio})
    opened = open_store(store)
    plan = plan_visits(opened, "mask", ratio)
    policy = device_policy("cpu", cfg)
    for world in (1, 2):  # each of two DDP workers takes the budget's steps too
        for rank in range(world):
            data = build_loaders(cfg, plan, opened, rank, world, policy)
            assert len(data.crops) == 3 * 2 * world and len(data.loader) == 3
    assert steps_per_epoch(cfg, len(plan.train_keys), 2) == 3
    torch.manual_seed(0)
    model = create_model("fpn", **cfg.model.kwargs)
    data = build_loaders(cfg, plan, opened, 0, 1, policy)
    out = train_epoch(model, data.loader, build_loss(cfg.loss, False),
                      build_optimizer(model, cfg.optim), torch.device("cpu"), cfg, policy)
    assert out["steps"] == 3 and out["crops"] == 6
    # without a budget in steps: the reference's crops per visit, so the steps follow the visits
    ref = _cfg(store, **{"data.ratio": ratio})
    assert steps_per_epoch(ref, len(plan.train_keys)) == max(1, 2 * len(plan.train_keys) // 2)


# -- the selection score -------------------------------------------------------------------------

def test_a_model_that_predicts_nothing_scores_zero_on_a_split_with_ga():
    from fpn.metrics import VisitMetrics, visit_record
    from fpn.tags import VAL_SCORE
    from fpn.training.worker import epoch_metrics, score_name

    masks = {"A_0": np.zeros((8, 32)), "B_0": np.zeros((8, 32)), "C_0": np.zeros((8, 32))}
    masks["B_0"][2:4, 5:9] = 1  # one visit with a little GA, two without
    empty, val = VisitMetrics(), VisitMetrics()
    for key, mask in masks.items():
        empty.update(visit_record(key, np.zeros_like(mask), mask, ssl=False))
        val.update(visit_record(key, mask * 0.9, mask, ssl=False))
    agg = empty.aggregate()
    assert agg["dice_mean"] == pytest.approx(2 / 3)  # what the reference ranked by
    assert agg["dice_pooled"] == 0.0
    assert val.aggregate()["dice_pooled"] == 1.0
    train = {"loss": 0.5, "crops": 4.0, "seconds": 1.0, "steps": 2.0}
    cfg = TrainConfig.model_validate({"data": {"store": "/x.zarr"}})
    metrics = epoch_metrics(0, train, empty, 0.1, 1, score_name(cfg))
    assert metrics[VAL_SCORE] == 0.0 and metrics["val/dice_mean"] == pytest.approx(2 / 3)
    assert metrics["train/steps"] == 2.0
    old = cfg.with_overrides({"selection": "mean_dice"})
    assert epoch_metrics(0, train, empty, 0.1, 1, score_name(old))[VAL_SCORE] == pytest.approx(2 / 3)
    # per-visit Dice is still reported; pixel counts are summed, never averaged
    assert "dice_std" in agg and "pred_px_mean" not in agg


# -- BatchNorm statistics ------------------------------------------------------------------------

def _bn_stats(model: torch.nn.Module) -> list[torch.Tensor]:
    from fpn.training.batchnorm import batchnorm_layers

    return [t.clone() for m in batchnorm_layers(model) for t in (m.running_mean, m.running_var)]


def test_batchnorm_statistics_are_recomputed_before_validation(store):
    from fpn.device import device_policy
    from fpn.losses import build_loss
    from fpn.models import create_model
    from fpn.training.batchnorm import recompute_batchnorm
    from fpn.training.loop import build_optimizer
    from fpn.training.worker import build_loaders, train_then_validate

    cfg = _cfg(store, steps_per_epoch=2, bn_recompute_batches=2)
    opened = open_store(store)
    plan = plan_visits(opened, "mask", 1.0)
    policy = device_policy("cpu", cfg)
    data = build_loaders(cfg, plan, opened, 0, 1, policy)
    torch.manual_seed(0)
    model = create_model("fpn", **cfg.model.kwargs)
    opt = build_optimizer(model, cfg.optim)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0)
    seen: list[list[torch.Tensor]] = []  # the statistics each validation forward saw

    def at_validation(module, args):
        if not module.training:
            seen.append(_bn_stats(module))

    model.register_forward_pre_hook(at_validation)
    out = train_then_validate(model, model, data, build_loss(cfg.loss, False), opt, sched,
                              torch.device("cpu"), cfg, policy)
    assert out.bn_batches == 2 and len(seen) == len(out.val.records) == len(plan.val_keys)
    # what validation saw: the statistics of this epoch's first two training batches under the
    # final weights, not the running averages of training
    twin = create_model("fpn", **cfg.model.kwargs)
    twin.load_state_dict(model.state_dict())
    recompute_batchnorm(twin, (x for x, _ in data.loader), 2)
    for a, b in zip(seen[0], _bn_stats(twin)):
        torch.testing.assert_close(a, b)
    # off (the reference): validation sees the running averages that training left
    seen.clear()
    out = train_then_validate(model, model, data, build_loss(cfg.loss, False), opt, sched,
                              torch.device("cpu"), cfg.with_overrides({"bn_recompute_batches": 0}),
                              policy)
    recompute_batchnorm(twin, (x for x, _ in data.loader), 2)
    assert out.bn_batches == 0
    assert any(not torch.equal(a, b) for a, b in zip(seen[0], _bn_stats(twin)))


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from fpn.training.batchnorm import recompute_batchnorm

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 1), torch.nn.BatchNorm2d(3))
    gen = torch.Generator().manual_seed(100 + rank)  # each rank its own shard of crops
    batches = [torch.randn(4, 1, 5, 5, generator=gen) * (1 + rank) + rank for _ in range(3)]
    assert recompute_batchnorm(net, batches, 3) == 3
    torch.save({"stats": _bn_stats(net), "batches": batches}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_recomputed_statistics_are_the_same_on_every_ddp_worker(tmp_path):
    import torch.multiprocessing as mp

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for a, b in zip(ranks[0]["stats"], ranks[1]["stats"]):
        torch.testing.assert_close(a, b)
    # each rank's statistics as update_bn makes them (the mean of its batches' means and
    # unbiased variances), pooled over the ranks: the mean of the means, and the variance of
    # the mixture (the mean of var + mean^2, less the pooled mean squared)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 1), torch.nn.BatchNorm2d(3))
    per_rank = []
    with torch.no_grad():
        for r in ranks:
            feats = [net[0](x) for x in r["batches"]]
            per_rank.append((torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0),
                             torch.stack([f.var((0, 2, 3)) for f in feats]).mean(0)))
    mean = torch.stack([m for m, _ in per_rank]).mean(0)
    var = torch.stack([v + m ** 2 for m, v in per_rank]).mean(0) - mean ** 2
    torch.testing.assert_close(ranks[0]["stats"][0], mean)
    torch.testing.assert_close(ranks[0]["stats"][1], var)
    assert not torch.allclose(var, per_rank[0][1])  # the ranks' shards differ


# -- the head's prior ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["fpn", "lachinov", "resensnet", "ipn-bn", "ipnv2"])
def test_every_network_exposes_its_head_and_takes_a_prior(name):
    from fpn.models import create_model
    from fpn.models.head import output_head, prior_logit, set_output_prior

    small = {"fpn": {"width": 0.25}, "resensnet": {"width": 0.25}}.get(name, {})
    model = create_model(name, **small)
    bias = set_output_prior(model, 0.05)
    assert bias == pytest.approx(math.log(0.05 / 0.95))
    torch.testing.assert_close(output_head(model).bias, torch.full_like(output_head(model).bias,
                                                                        bias))
    assert math.isfinite(prior_logit(0.0)) and math.isfinite(prior_logit(1.0))
    with pytest.raises(ValueError, match="foreground fraction"):
        prior_logit(1.5)


def test_the_prior_is_the_training_split_ga_fraction_and_only_for_a_fresh_head(store):
    from fpn.training.priors import ga_fraction, wants_head_prior

    opened = open_store(store)
    plan = plan_visits(opened, "mask", 1.0)
    masks = np.stack([opened.read(k, "mask") for k in plan.train_keys])
    assert ga_fraction(opened, plan.train_keys) == pytest.approx(float((masks >= 0.5).mean()))
    cfg = _cfg(store)
    assert wants_head_prior(cfg, resumed=False)
    assert not wants_head_prior(cfg, resumed=True)  # a resumed run's head is trained
    assert not wants_head_prior(cfg.with_overrides({"head_prior": False}), resumed=False)
    assert not wants_head_prior(cfg.with_overrides({"init": "/runs/pre"}), resumed=False)
    assert wants_head_prior(cfg.with_overrides({"init": "/runs/pre", "reinit_head": True}),
                            resumed=False)


# -- foreground crops ----------------------------------------------------------------------------

def test_foreground_crops_contain_ga_in_the_asked_fraction_and_off_changes_nothing(store):
    from fpn.config import DataConfig
    from fpn.data.dataset import CropDataset

    opened = open_store(store)
    keys = [k for k in plan_visits(opened, "mask", 1.0).train_keys
            if (opened.read(k, "mask") >= 0.5).any()]

    def crops(fraction: float) -> CropDataset:
        cfg = DataConfig(store=store, crop=(4, 8), loader_workers=0, augment=False,
                         foreground_fraction=fraction)
        return CropDataset(cfg, keys, seed=5, length=90)

    always = crops(1.0)
    assert all(always[i][1].sum() > 0 for i in range(len(always)))
    third = crops(1 / 3)
    for i in (0, 5, 11):  # a crop is a function of its seed
        torch.testing.assert_close(third[i][1], third[i][1])
    with_ga = np.mean([third[i][1].sum() > 0 for i in range(90)])
    uniform = np.mean([crops(0.0)[i][1].sum() > 0 for i in range(90)])
    assert with_ga > uniform
    # off draws nothing: the crops are exactly those of a dataset without the option
    plain = CropDataset(DataConfig(store=store, crop=(4, 8), loader_workers=0,
                                   augment=False), keys, seed=5, length=90)
    for i in (0, 7, 42):
        torch.testing.assert_close(crops(0.0)[i][0], plain[i][0])
