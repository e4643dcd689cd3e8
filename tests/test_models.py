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
from fpn.models.lachinov import BottleneckBlock

torch.set_num_threads(1)

# small widths keep every test fast on 2 CPU cores; the checks do not depend on width
SMALL: dict[str, dict] = {
    "fpn": {"width": 1 / 16},
    "resensnet": {"width": 1 / 16},
    "lachinov": {"width": 1 / 8},
    "ipn": {"channels": 4},
    "ipn-bn": {"channels": 2},
    "ipnv2": {"channels": (4, 4)},
    "ipnv2-bn": {"channels": (2, 4)},
}
ALL_MODELS = ["fpn", "ipn", "ipn-bn", "ipnv2", "ipnv2-bn", "lachinov", "resensnet"]
# parameters at defaults (one output channel); the published designs' counts are pinned here
PARAMETERS = {
    "fpn": 4_369_553,  # the reference release, exactly
    "resensnet": 4_718_737,
    "lachinov": 1_513_697,  # the authors' release without its unused fourth decoder stage
    "ipn": 1_551_553,  # Li et al.: ~1.55 M
    "ipn-bn": 1_552_513,
    "ipnv2": 2_113_025,  # Li et al.: ~2.1 M
    "ipnv2-bn": 2_040_833,
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
    assert list_models() == ALL_MODELS
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
        ("lachinov", {"blocks": (1, 1, 2)}, "blocks"),
        ("lachinov", {"decoder_blocks": (1, 1, 2, 4)}, "decoder_blocks"),
        ("lachinov", {"upsample": "transpose"}, "upsample"),
        ("ipn", {"depth": 0}, "depth"),
        ("ipn", {"norm": "layer"}, "norm"),
        ("ipnv2", {"channels": (64,)}, "channels"),
        ("ipnv2", {"levels": 0}, "levels"),
        ("ipnv2-bn", {"channels": (64,)}, "channels"),
    ],
)
def test_bad_constructor_arguments_raise_value_error(name: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_model(name, **kwargs)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_output_lies_on_the_input_grid_for_awkward_sizes(name: str) -> None:
    model = _small(name).eval()
    # sizes divisible by nothing the networks pool by (small, so that the test stays fast)
    for depth in (64, 100):
        assert depth >= model.min_depth
        x = torch.randn(1, 1, 13, depth, 37)
        with torch.no_grad():
            y = model(x)
        assert y.shape == (1, 1, 13, 37), (name, depth)
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
    for name in ("resensnet", "ipn", "ipn-bn", "ipnv2", "ipnv2-bn"):
        model = _small(name, depth=64).eval()
        assert model.max_depth == 64
        with pytest.raises(ValueError, match="depth"):
            model(torch.randn(1, 1, 4, 80, 16))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_parameter_counts_at_defaults(name: str) -> None:
    count = sum(p.numel() for p in create_model(name).parameters())
    assert count == PARAMETERS[name], (name, count)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("fpn", {}),
        ("fpn", {"reduction": "attention", "upsample": "transpose", "norm": "group"}),
        ("resensnet", {"depth": 64}),
        ("lachinov", {}),
        ("lachinov", {"upsample": "nearest", "norm": "batch"}),
        ("ipn", {"depth": 64}),
        ("ipn-bn", {"depth": 64}),
        ("ipnv2", {"depth": 64}),
        ("ipnv2-bn", {"depth": 64, "upsample": "transpose"}),
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


def _convs(module: torch.nn.Module) -> list[torch.nn.Conv3d]:
    return [m for m in module.modules() if isinstance(m, torch.nn.Conv3d)]


def test_lachinov_is_built_as_the_authors_release() -> None:
    model = create_model("lachinov")
    assert model.channels == (32, 64, 128, 256)
    stem_conv = model.stem[0]
    assert stem_conv.kernel_size == (3, 1, 3) and stem_conv.bias is not None
    assert isinstance(model.stem[1], torch.nn.InstanceNorm3d) and model.stem[1].affine
    blocks = [[m for m in stage if isinstance(m, BottleneckBlock)] for stage in model.encoder]
    assert [len(b) for b in blocks] == [1, 1, 2, 4]
    for level, stage in enumerate(model.encoder[1:], start=1):
        down = stage[0]  # bias-free (1, 2, 2) strided conv, no norm after it
        assert isinstance(down, torch.nn.Conv3d) and down.kernel_size == down.stride == (1, 2, 2)
        assert down.bias is None and isinstance(stage[1], BottleneckBlock), level
    for block, channels in ((blocks[0][0], 32), (blocks[3][0], 256)):
        reduce, inner, expand = _convs(block)
        assert (reduce.out_channels, inner.kernel_size, expand.out_channels) == (
            channels // 8, (1, 3, 3), channels)
        assert all(c.bias is None for c in (reduce, inner, expand))
    assert [sum(isinstance(m, BottleneckBlock) for m in stage.modules())
            for stage in model.decoder] == [2, 1, 1]  # third, second, top level
    for stage, (deep, skip) in zip(model.decoder, ((256, 128), (128, 64), (64, 32))):
        assert (stage.reduce.in_channels, stage.reduce.out_channels) == (deep, skip)
        fuse = stage.fuse[0]
        assert (fuse.in_channels, fuse.out_channels, fuse.kernel_size) == (2 * skip, skip, (3, 3, 3))
        assert {c.kernel_size for c in _convs(stage.blocks)} == {(1, 1, 1), (3, 1, 3)}
    assert model.head.kernel_size == (3, 1, 3) and model.head.bias is not None


def test_lachinov_blocks_add_without_a_final_relu_and_handle_awkward_sizes() -> None:
    torch.manual_seed(0)
    block = BottleneckBlock(16, (1, 3, 3), "instance").eval()
    x = -torch.rand(1, 16, 2, 4, 5) - 1.0  # all negative: a ReLU after the sum would clip it
    with torch.no_grad():
        y = block(x)
    assert (y < 0).any()
    torch.testing.assert_close(y - x, block.body(x))
    model = _small("lachinov").eval()
    assert model.min_depth == 8
    with torch.no_grad():
        for s, depth, w in ((13, 20, 37), (1, 8, 9), (7, 33, 24)):
            assert model(torch.randn(2, 1, s, depth, w)).shape == (2, 1, s, w)
    with pytest.raises(ValueError, match="depth >= 8"):
        model(torch.randn(1, 1, 4, 7, 16))


def test_lachinov_skips_and_decoder_stay_at_the_bottleneck_depth() -> None:
    model = _small("lachinov").eval()
    seen: list[tuple[int, ...]] = []
    hooks = [stage.fuse.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape))
             for stage in model.decoder]
    with torch.no_grad():
        model(torch.randn(1, 1, 5, 64, 48))
    for hook in hooks:
        hook.remove()
    # depth 64 / 8 everywhere; A-scans 48 / 4, 48 / 2, 48
    assert [(shape[3], shape[4]) for shape in seen] == [(8, 12), (8, 24), (8, 48)]


def test_published_ipn_designs_have_no_normalisation_and_ipnv2_pools_first() -> None:
    norms = (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm)
    for name in ("ipn", "ipnv2"):
        model = create_model(name)
        assert not any(isinstance(m, norms) for m in model.modules()), name
        assert all(c.bias is not None for c in _convs(model)), name
    for name in ("ipn-bn", "ipnv2-bn"):
        assert any(isinstance(m, torch.nn.BatchNorm3d) for m in create_model(name).modules())
    ipn, ipnv2 = _small("ipn").eval(), _small("ipnv2").eval()
    assert not any(plm.pool_first for plm in ipn.plms)
    assert all(plm.pool_first for plm in ipnv2.plms)
    depths: list[int] = []
    hook = ipnv2.plms[0].convs[0].register_forward_pre_hook(
        lambda _m, args: depths.append(args[0].shape[3]))
    with torch.no_grad():
        ipnv2(torch.randn(1, 1, 16, 128, 16))
    hook.remove()
    assert depths == [128 // 8]  # the first module's convs see the pooled features
    # the separate skip branch: a depth-long strided conv and its own 2D block before the U-Net
    assert ipnv2.skip.kernel_size == ipnv2.skip.stride == (1, 128, 1)
    assert ipnv2.skip_block[0].in_channels == 2 * ipnv2.channels[0]


def test_published_ipnv2_upsamples_bilinearly(monkeypatch: pytest.MonkeyPatch) -> None:
    modes: list[str] = []
    interpolate = F.interpolate

    def spy(*args, **kwargs):
        modes.append(kwargs.get("mode", "nearest"))
        return interpolate(*args, **kwargs)

    monkeypatch.setattr(F, "interpolate", spy)
    with torch.no_grad():
        _small("ipnv2", depth=64).eval()(torch.randn(1, 1, 16, 64, 16))
        assert modes == ["bilinear"] * 4
        modes.clear()
        _small("lachinov").eval()(torch.randn(1, 1, 4, 16, 16))
        assert modes == ["trilinear"] * 3


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


@pytest.mark.parametrize("name", ["fpn", "lachinov", "ipn", "ipnv2"])
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


@pytest.mark.parametrize("name", ["fpn", "lachinov", "ipn", "ipnv2"])
def test_channels_last_is_numerically_the_same_network(name: str) -> None:
    kwargs = {"width": 1 / 8} if name == "fpn" else dict(SMALL[name])
    if name.startswith("ipn"):
        kwargs["depth"] = 64
    torch.manual_seed(0)
    a = create_model(name, **kwargs).eval()
    b = create_model(name, **kwargs, channels_last=False).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 1, 8, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=1e-5, atol=1e-5)
