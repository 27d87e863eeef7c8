"""The GPU path (`trainer.device=auto` on a CUDA machine): every parameter, buffer and DMD state on the GPU, a
checkpoint that resumes there (its RNG states go back to the CPU generators), bf16 autocast, and the BK-Core in
complex64 on CUDA against the same computation on the CPU. Skipped where torch sees no CUDA device (kbk's CI)."""

from __future__ import annotations

import pytest
import torch
from test_trainer import CrashAt, make_trainer

from kbk import build
from kbk.models.bk_core import causal_resolvent_diagonal

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def tensors_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


def test_auto_picks_cuda():
    assert build.resolve_device("auto") == "cuda"


def test_training_keeps_every_tensor_on_the_gpu_and_a_checkpoint_resumes_there(tmp_path):
    whole = make_trainer(tmp_path / "whole", device="auto", max_steps=12, checkpoint_every=3)
    expected = whole.fit()
    on_cpu = [name for name, t in tensors_of(whole.model).items() if t.device.type != "cuda"]
    assert not on_cpu, on_cpu  # the DMD buffers (pairs, Grams, counters) included
    assert whole.events["dmd_accepted"] > 0
    state = whole.optimizer.state[next(iter(whole.model.parameters()))]
    assert state["exp_avg"].device.type == "cuda"

    crashed = make_trainer(tmp_path / "split", device="auto", max_steps=12, checkpoint_every=3, tracker=CrashAt(7))
    with pytest.raises(KeyboardInterrupt):
        crashed.fit()
    resumed = make_trainer(tmp_path / "split", device="auto", max_steps=12, checkpoint_every=3)
    resumed.resume()  # map_location=cuda: model, optimizer, DMD state on the GPU, RNG states back on the CPU
    assert resumed.step == 6
    got = resumed.fit()
    assert resumed.step == 12 and all(t.device.type == "cuda" for t in tensors_of(resumed.model).values())
    # CUDA kernels need not be deterministic: the same losses to float32 rounding, not bit for bit
    assert got["val/loss"] == pytest.approx(expected["val/loss"], rel=1e-3)


def test_bf16_autocast_trains_on_the_gpu():
    trainer = make_trainer(device="cuda", max_steps=3, precision="bf16")
    summary = trainer.fit()
    assert torch.isfinite(torch.tensor(summary["val/loss"]))


@pytest.mark.parametrize("n", [128, 4096])
def test_the_bk_core_in_complex64_on_cuda_matches_the_cpu(n):
    g = torch.Generator().manual_seed(n)
    diag = -2 + 6 * torch.rand(4, n, generator=g) - 3
    cpu_in, gpu_in = diag.double().requires_grad_(), diag.cuda().requires_grad_()
    cpu = causal_resolvent_diagonal(cpu_in, dtype=torch.complex128)
    gpu = causal_resolvent_diagonal(gpu_in, dtype=torch.complex64)
    assert gpu.device.type == "cuda" and gpu.dtype == torch.complex64
    assert ((gpu.detach().cpu().to(torch.complex128) - cpu.detach()).abs() / cpu.detach().abs()).max() < 1e-4
    cpu.imag.sum().backward()
    gpu.imag.sum().backward()
    assert torch.allclose(gpu_in.grad.cpu().double(), cpu_in.grad, rtol=1e-3, atol=1e-4)
