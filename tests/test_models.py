"""Tests of fpn.models: shape contract, parameter counts, gradients, projection family,
pretrained loading, and the optimised FPN against the plain yardstick in benchmarks/."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fpn.models import (
    FPN,
    ProjectionBlock,
    create_model,
    list_models,
    load_pretrained,
    reset_head,
)

torch.set_num_threads(1)

# small widths keep every test fast on 2 CPU cores; the checks do not depend on width
SMALL: dict[str, dict] = {
    "fpn": {"width": 1 / 16},
    "resensnet": {"width": 1 / 16},
    "lachinov": {"width": 1 / 8},
    "ipn": {"channels": 2},
    "ipnv2": {"channels": (2, 4)},
}


def _small(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, **{**SMALL[name], **kwargs})


def _load_model_speed():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "model_speed.py"
    spec = importlib.util.spec_from_file_location("model_speed", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_registry_lists_all_models_and_drops_none_kwargs() -> None:
    assert list_models() == ["fpn", "ipn", "ipnv2", "lachinov", "resensnet"]
    model = create_model("fpn", width=None, norm=None, out_channels=2)
    assert isinstance(model, FPN) and model.channels == (16, 32, 64, 128, 256)
    assert model.head.out_channels == 2
    with pytest.raises(ValueError, match="unknown model"):
        create_model("unet")


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("fpn", {"norm": "layer"}, "norm"),
        ("fpn", {"channels": (16, 32)}, "channels"),
        ("fpn", {"reduction": "median"}, "reduction"),
        ("fpn", {"depth_kernel": 4}, "depth_kernel"),
        ("fpn", {"upsample": "bilinear"}, "upsample"),
        ("fpn", {"width": 0}, "width"),
        ("fpn", {"init": "kaiming"}, "init"),
        ("resensnet", {"depth": 8}, "depth"),
        ("lachinov", {"channels": (32,)}, "channels"),
        ("ipn", {"depth": 0}, "depth"),
        ("ipnv2", {"channels": (64,)}, "channels"),
    ],
)
def test_bad_constructor_arguments_raise_value_error(name: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_model(name, **kwargs)


@pytest.mark.parametrize("name", ["fpn", "resensnet", "lachinov", "ipn", "ipnv2"])
def test_output_lies_on_the_input_grid_for_awkward_sizes(name: str) -> None:
    model = _small(name).eval()
    for depth in (64, 96, 128):
        assert depth >= model.min_depth
        x = torch.randn(1, 1, 49, depth, 200)
        with torch.no_grad():
            y = model(x)
        assert y.shape == (1, 1, 49, 200), (name, depth)
        assert y.dtype == torch.float32 and torch.isfinite(y).all()


def test_fpn_pads_depth_that_is_not_a_multiple_of_16_and_rejects_too_shallow_input() -> None:
    model = _small("fpn").eval()
    assert model.min_depth == 64 and model.max_depth is None
    with torch.no_grad():
        assert model(torch.randn(2, 1, 5, 100, 17)).shape == (2, 1, 5, 17)
    with pytest.raises(ValueError, match="depth >= 64"):
        model(torch.randn(1, 1, 8, 48, 32))
    with pytest.raises(ValueError, match=r"\(B, 1, S, D, W\)"):
        model(torch.randn(1, 2, 8, 64, 32))


def test_depth_bound_models_reject_deeper_input_with_a_clear_error() -> None:
    assert _small("ipn").pools == (4, 4, 2, 2, 2)
    assert _small("ipn", depth=64).pools == (4, 2, 2, 2, 2)
    assert _small("ipnv2").pools == (8, 4, 4)
    for name in ("resensnet", "ipn", "ipnv2"):
        model = _small(name, depth=64).eval()
        assert model.max_depth == 64
        with pytest.raises(ValueError, match="depth"):
            model(torch.randn(1, 1, 4, 80, 16))


def test_fpn_parameter_count_matches_the_reference_design() -> None:
    count = sum(p.numel() for p in create_model("fpn").parameters())
    assert abs(count - 4_369_553) <= 0.01 * 4_369_553, count


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("fpn", {}),
        ("fpn", {"reduction": "attention", "upsample": "transpose", "norm": "group"}),
        ("resensnet", {"depth": 64}),
        ("lachinov", {"upsample": "transpose"}),
        ("ipn", {"depth": 64}),
        ("ipnv2", {"depth": 64, "upsample": "transpose"}),
    ],
)
def test_every_parameter_receives_a_gradient(name: str, kwargs: dict) -> None:
    if name in ("fpn", "resensnet"):
        kwargs = {"width": 1 / 4, **kwargs}  # one-channel levels die too easily by chance
    model = _small(name, **kwargs).train()
    # at depth 64 the attention softmax sees a single position (constant weight, no gradient)
    depth = 128 if kwargs.get("reduction") == "attention" else 64
    x = torch.randn(2, 1, 16, depth, 32)
    target = (torch.rand(2, 1, 16, 32) > 0.5).float()
    logits = model(x)
    F.binary_cross_entropy_with_logits(logits, target).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, dead


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"depth_convs_offset": -1},
        {"depth_convs_offset": -4},
        {"depth_convs_offset": 1},
        {"depth_kernel": 5},
        {"reduction": "max"},
        {"reduction": "attention"},
        {"upsample": "transpose"},
        {"norm": "instance"},
        {"norm": "group"},
        {"channels": (4, 4, 8, 8, 8), "width": 1.0},
    ],
)
def test_projection_variants_build_run_and_are_deterministic_in_eval(kwargs: dict) -> None:
    model = _small("fpn", **kwargs).eval()
    x = torch.randn(1, 1, 8, model.min_depth, 32)
    with torch.no_grad():
        first, second = model(x), model(x)
    assert first.shape == (1, 1, 8, 32)
    assert torch.equal(first, second)


def test_resensnet_final_kernels_span_the_remaining_depth() -> None:
    model = _small("resensnet", depth=96, depth_convs_offset=-1)
    kernels = [p.final_kernel for p in model.projections]
    assert kernels == [12, 12, 12, 12, 6]  # 96 / 2**level, halved (3, 2, 1, 0, 0) times
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 1, 4, 70, 16)).shape == (1, 1, 4, 16)
        relu = _small("resensnet", depth=64, final_relu=True).eval()
        assert relu(torch.randn(1, 1, 4, 64, 16)).min() >= 0


@pytest.mark.parametrize("reduction", ["mean", "max", "attention"])
def test_projection_block_reduces_depth_to_an_en_face_map(reduction: str) -> None:
    block = ProjectionBlock(3, 2, reduction=reduction, norm="batch")
    assert block.output_depth(64) == 13
    assert block(torch.randn(2, 3, 5, 64, 7)).shape == (2, 3, 5, 7)


def test_reference_initialisation() -> None:
    model = create_model("fpn")
    bn = torch.cat([m.weight.detach() for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d)])
    assert abs(bn.mean().item() - 1.0) < 0.01 and 0.01 < bn.std().item() < 0.03
    assert torch.count_nonzero(model.head.bias) == 0
    default = create_model("fpn", init="default")
    assert torch.all(next(m for m in default.modules() if isinstance(m, torch.nn.BatchNorm3d)).weight == 1)


@pytest.mark.parametrize("name", ["fpn", "lachinov", "ipnv2"])
def test_pretrained_state_dict_loads_with_and_without_head(name: str) -> None:
    ssl = _small(name)
    state = {f"module.{k}": v for k, v in ssl.state_dict().items()}  # as saved from DDP
    torch.manual_seed(1)
    finetune = create_model(name, **SMALL[name])
    loaded = load_pretrained(finetune, state, reinit_head=False)
    assert set(loaded) == set(ssl.state_dict())
    for (k, a), b in zip(ssl.state_dict().items(), finetune.state_dict().values()):
        assert torch.equal(a, b), k

    torch.manual_seed(2)
    fresh = create_model(name, **SMALL[name], out_channels=3)  # another head size is fine
    loaded = load_pretrained(fresh, state, reinit_head=True)
    assert not any(k.startswith("head.") for k in loaded)
    assert torch.equal(fresh.state_dict()[loaded[0]], ssl.state_dict()[loaded[0]])
    assert fresh.head.out_channels == 3

    before = fresh.head.weight.detach().clone()
    reset_head(fresh)
    assert not torch.equal(before, fresh.head.weight)


def test_load_pretrained_rejects_another_architecture() -> None:
    state = _small("fpn").state_dict()
    with pytest.raises(ValueError, match="shape of"):
        load_pretrained(create_model("fpn", width=1 / 8), state, reinit_head=True)
    with pytest.raises(ValueError, match="missing"):
        load_pretrained(_small("resensnet"), {k: v for k, v in state.items() if "decoder" not in k},
                        reinit_head=False)


def test_optimised_fpn_equals_the_plain_yardstick() -> None:
    speed = _load_model_speed()
    torch.manual_seed(0)
    plain = speed.PlainFPN()
    fast = create_model("fpn")
    speed.copy_plain_weights(plain, fast)
    x = torch.randn(2, 1, 8, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast.eval()(x), plain.eval()(x), rtol=1e-4, atol=1e-5)
    # training mode: batch statistics over the few deepest voxels amplify rounding differences
    # of the two layouts, so compare relative to the output's norm, and compare gradients too
    expected, actual = plain.train()(x), fast.train()(x)
    assert (actual - expected).norm() / expected.norm() < 1e-3
    expected.square().mean().backward()
    actual.square().mean().backward()
    head_plain, head_fast = plain.head.weight.grad.flatten(), fast.head.weight.grad.flatten()
    assert (head_fast - head_plain).norm() / head_plain.norm() < 1e-2


def test_channels_last_is_numerically_the_same_network() -> None:
    torch.manual_seed(0)
    a = create_model("fpn", width=1 / 8).eval()
    b = create_model("fpn", width=1 / 8, channels_last=False).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 1, 8, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=1e-5, atol=1e-5)
