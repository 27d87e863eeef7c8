"""`trainer.precision`: bf16 autocast of forward and loss (CPU and CUDA) with the BK-Core kept in float32/complex64;
fp32, the default, computes exactly what kbk computed before (tests/test_pinned_results.py pins it)."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_kbk, one_torch_thread
from test_trainer import make_trainer, without_timings

import kbk.models.resnet_bk as resnet_bk
from kbk.config import settings_of
from kbk.errors import ConfigError


def evaluations(trainer) -> list[float]:
    return [m["val/loss"] for _, m in trainer.history if "val/loss" in m]


@pytest.fixture
def bk_core_calls(monkeypatch) -> list[tuple[torch.dtype, torch.dtype, bool]]:
    """(input dtype, output dtype, autocast on?) of every BK-Core call a ResNet-BK layer makes."""
    calls = []
    for name in ("resolvent_diagonal", "causal_resolvent_diagonal"):
        core = getattr(resnet_bk, name)

        def spy(diag, *args, core=core, **kwargs):
            out = core(diag, *args, **kwargs)
            calls.append((diag.dtype, out.dtype, torch.is_autocast_enabled(diag.device.type)))
            return out

        monkeypatch.setattr(resnet_bk, name, spy)
    return calls


def test_bf16_trains_on_the_cpu_with_the_bk_core_in_float32(bk_core_calls):
    trainer = make_trainer(epochs=3, lr=1e-2, precision="bf16")
    logits = []
    trainer.model.lm_head.register_forward_hook(lambda module, args, out: logits.append(out.dtype))
    with one_torch_thread():
        summary = trainer.fit()
    assert set(logits) == {torch.bfloat16}  # autocast reached the model's matmuls
    assert set(bk_core_calls) == {(torch.float32, torch.complex64, False)}  # but not the BK-Core
    first = evaluations(trainer)[0]
    assert summary["val/loss"] < first - 0.3 and all(p.dtype == torch.float32 for p in trainer.model.parameters())


def test_fp32_is_the_default_and_uses_no_autocast(bk_core_calls):
    with one_torch_thread():  # each built (seeded) just before it trains: training draws from the global RNG
        default = make_trainer(max_steps=6)
        default.fit()
        explicit = make_trainer(max_steps=6, precision="fp32")
        explicit.fit()
    assert without_timings(default.history) == without_timings(explicit.history)  # bit for bit
    assert {autocast for *_, autocast in bk_core_calls} == {False}
    with one_torch_thread():
        bf16 = make_trainer(max_steps=6, precision="bf16")
        bf16.fit()
    assert evaluations(bf16) != evaluations(default)  # bf16 does compute something else


def test_an_unknown_precision_names_the_choices():
    with pytest.raises(ConfigError, match=r"trainer\.precision='fp16'.*fp32, bf16"):
        settings_of(compose_kbk(["trainer.precision=fp16"]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_trains_on_cuda_with_the_bk_core_in_float32(bk_core_calls):
    trainer = make_trainer(epochs=3, lr=1e-2, precision="bf16", device="cuda")
    summary = trainer.fit()
    assert set(bk_core_calls) == {(torch.float32, torch.complex64, False)}
    assert summary["val/loss"] < evaluations(trainer)[0] - 0.3
