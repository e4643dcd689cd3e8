"""The device policy: the CUDA branch's decisions and preparations, run on a CPU.

Every registered network goes through the GPU path's model and input preparation (channels-last
weights by rank, ``channels_last_3d`` inputs) on the CPU and must give the plain path's numbers
(fp32). The autocast dtype, the DDP backend, pinned memory and GPU resources are checked as
values; ``torch.compile``'s fallback runs for real, with a backend that fails.
"""

from __future__ import annotations

import copy

import pytest
import torch

from fpn.config import TrainConfig
from fpn.device import CompiledWithFallback, cpu_has_amx_bf16, device_policy, to_channels_last
from fpn.models import create_model, list_models

TINY = {"fpn": {"width": 0.25}, "resensnet": {"width": 0.25}}
SHAPE = (1, 1, 8, 64, 32)  # (B, C, S, D, W)


def _cfg(**over) -> TrainConfig:
    return TrainConfig.model_validate({"data": {"store": "unused"}, **over})


def test_cuda_policy_values():
    gpu = device_policy("cuda", _cfg(gpus_per_worker=0.5))
    assert gpu.autocast_dtype == torch.bfloat16 and gpu.channels_last
    assert gpu.pin_memory and gpu.non_blocking and gpu.ddp_backend == "nccl"
    assert gpu.gpus_per_worker == 0.5  # fractions: trials of a search share one card
    assert gpu.resources_per_worker(2) == {"CPU": 2.0, "GPU": 0.5}
    assert not gpu.compile  # off until the device check measures it on a GPU
    assert device_policy("cuda:1", _cfg()).device_type == "cuda"
    off = device_policy("cuda", _cfg(amp=False, channels_last=False, compile=True))
    assert off.autocast_dtype is None and not off.channels_last and off.compile
    assert device_policy("cuda").autocast_dtype == torch.bfloat16  # inference: no config


def test_cpu_policy_values():
    cpu = device_policy("cpu", _cfg(gpus_per_worker=0.0))
    assert cpu.autocast_dtype is None and not cpu.channels_last
    assert not cpu.pin_memory and not cpu.non_blocking and cpu.ddp_backend == "gloo"
    assert cpu.resources_per_worker(1) == {"CPU": 1.0}
    with pytest.raises(ValueError, match="unsupported device type"):
        device_policy("tpu", None)


def test_cpu_bf16_autocast_needs_amp_cpu_amp_and_amx():
    """bf16 on CPU only where the recipe asks for it (``amp`` and ``cpu_amp``) and the CPU has
    AMX; ``amx`` stands in for the CPUID probe, so both answers are checked on any machine."""
    from types import SimpleNamespace

    def cfg(**over):  # a config with the fields the policy reads (cpu_amp may not be a field yet)
        return SimpleNamespace(**{"amp": True, "cpu_amp": True, **over})

    assert device_policy("cpu", cfg(), amx=True).autocast_dtype == torch.bfloat16
    assert device_policy("cpu", cfg(), amx=False).autocast_dtype is None
    assert device_policy("cpu", cfg(amp=False), amx=True).autocast_dtype is None
    assert device_policy("cpu", cfg(cpu_amp=False), amx=True).autocast_dtype is None
    assert device_policy("cpu", _cfg(), amx=True).autocast_dtype is None  # TrainConfig's default
    assert device_policy("cpu", None, amx=True).autocast_dtype is None  # inference: fp32
    assert not device_policy("cpu", cfg(), amx=True).channels_last
    assert device_policy("cuda", cfg(amp=False), amx=True).autocast_dtype is None
    assert isinstance(cpu_has_amx_bf16(), bool)


def test_train_epoch_runs_cpu_bf16_autocast():
    """The loop under the CPU bf16 policy (runs on any x86 CPU; fast only with AMX)."""
    from types import SimpleNamespace

    from fpn.losses import build_loss
    from fpn.training.loop import build_optimizer, train_epoch

    cfg = _cfg(batch_size=2)
    policy = device_policy("cpu", SimpleNamespace(amp=True, cpu_amp=True), amx=True)
    assert policy.autocast_dtype == torch.bfloat16
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(2, *SHAPE[1:], generator=g),
                (torch.rand(2, 1, SHAPE[2], SHAPE[4], generator=g) > 0.5).float())]
    losses = []
    for p in (policy, device_policy("cpu", cfg)):
        torch.manual_seed(0)
        model = p.prepare_model(create_model("fpn", **TINY["fpn"]), "cpu")
        out = train_epoch(model, batches, build_loss(cfg.loss, False),
                          build_optimizer(model, cfg.optim), torch.device("cpu"), cfg, p)
        losses.append(out["loss"])
    assert losses[0] == pytest.approx(losses[1], rel=2e-2)  # bf16 rounding, same step


def test_whole_module_memory_format_call_fails_but_per_rank_conversion_works():
    model = create_model("fpn", **TINY["fpn"])
    # the call the worker used to make: every registered network has Conv2d (4-D) weights
    with pytest.raises(RuntimeError, match="rank 5"):
        model.to(memory_format=torch.channels_last_3d)
    to_channels_last(model)
    for p in model.parameters():
        if p.dim() == 5:
            assert p.is_contiguous(memory_format=torch.channels_last_3d)
        elif p.dim() == 4:
            assert p.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("name", list_models())
def test_cuda_branch_preparation_gives_the_plain_numbers(name):
    torch.manual_seed(0)
    plain = create_model(name, channels_last=False, **TINY.get(name, {})).eval()
    prepared = create_model(name, **TINY.get(name, {}))
    prepared.load_state_dict(plain.state_dict())
    # the GPU branch's preparation, on this CPU
    gpu = device_policy("cuda", _cfg())
    prepared = gpu.prepare_model(prepared, "cpu").eval()
    x = torch.randn(*SHAPE, generator=torch.Generator().manual_seed(1))
    x_gpu = gpu.prepare_input(x, "cpu")
    assert x_gpu.is_contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        want = plain(x.contiguous())
        got = prepared(x_gpu)
    assert got.shape == want.shape == (1, 1, SHAPE[2], SHAPE[4])
    torch.testing.assert_close(got.contiguous(), want.contiguous(), rtol=1e-4, atol=1e-5)


def test_train_epoch_runs_the_cuda_branch_on_cpu():
    """The real loop with the GPU policy (minus bf16 autocast, a CUDA kernel) on a CPU."""
    from dataclasses import replace

    from fpn.losses import build_loss
    from fpn.training.loop import build_optimizer, train_epoch

    cfg = _cfg(batch_size=2)
    gpu = replace(device_policy("cuda", cfg), device_type="cpu", autocast_dtype=None)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(2, *SHAPE[1:], generator=g),
                (torch.rand(2, 1, SHAPE[2], SHAPE[4], generator=g) > 0.5).float())]
    losses = []
    for policy in (gpu, device_policy("cpu", cfg)):
        torch.manual_seed(0)
        model = policy.prepare_model(create_model("fpn", **TINY["fpn"]), "cpu")
        opt = build_optimizer(model, cfg.optim)
        out = train_epoch(model, batches, build_loss(cfg.loss, False), opt, torch.device("cpu"),
                          cfg, policy)
        losses.append(out["loss"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def _failing_backend(gm, example_inputs):
    raise RuntimeError("no compiler on this machine")


def test_compile_falls_back_to_eager_with_one_message(capsys):
    torch.manual_seed(0)
    model = create_model("fpn", **TINY["fpn"]).eval()
    eager_copy = copy.deepcopy(model)
    wrapped = CompiledWithFallback(model, backend=_failing_backend)
    x = torch.randn(*SHAPE)
    with torch.no_grad():
        out = wrapped(x)
        again = wrapped(x)
        want = eager_copy(x)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(again, want)
    assert wrapped.compiled_ok is False
    err = capsys.readouterr().err
    assert err.count("torch.compile failed") == 1 and "training eagerly" in err
    # the state dict is the eager module's: checkpoints never hold _orig_mod. keys
    assert all("_orig_mod" not in k for k in wrapped.state_dict())


def test_compile_wrapper_trains_through_the_loop_and_policy():
    """compile=True in the config: the loop's model is the wrapper; gradients reach the
    parameters (dynamo's own 'eager' backend: traced, no C++ toolchain needed)."""
    from fpn.losses import build_loss
    from fpn.training.loop import build_optimizer, train_epoch

    cfg = _cfg(compile=True, compile_backend="eager", batch_size=2)
    policy = device_policy("cpu", cfg)
    assert policy.compile
    torch.manual_seed(0)
    model = create_model("fpn", **TINY["fpn"])
    wrapped = policy.wrap_for_training(model)
    assert isinstance(wrapped, CompiledWithFallback)
    before = [p.detach().clone() for p in model.parameters()]
    batches = [(torch.randn(2, *SHAPE[1:]), (torch.rand(2, 1, SHAPE[2], SHAPE[4]) > 0.5).float())]
    train_epoch(wrapped, batches, build_loss(cfg.loss, False), build_optimizer(model, cfg.optim),
                torch.device("cpu"), cfg, policy)
    assert wrapped.compiled_ok is True
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
