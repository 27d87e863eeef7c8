"""Koopman mode without the redundant matmuls: in inference, φ's second Linear, K and ψ's first Linear run as the
one affine map they compose to (`KoopmanDynamics.folded_middle`). Same mathematics, different float rounding; the
gradient path is today's three maps, bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from kbk.koopman.config import KoopmanConfig
from kbk.models.koopman_lm import KoopmanDynamics, KoopmanResNetBKLM

D_MODEL, K = 24, 48


def dynamics(dtype: torch.dtype, k: int = K) -> KoopmanDynamics:
    """A companion with random weights and an operator far from I (so K's part of the fold is not trivial)."""
    torch.manual_seed(0)
    dyn = KoopmanDynamics(D_MODEL, KoopmanConfig(dim=k, init_scale=1.0)).to(dtype)
    with torch.no_grad():
        dyn.operator.copy_(torch.eye(k) + 0.5 * torch.randn(k, k) / k**0.5)
        for linear in (dyn.lift[2], dyn.unlift[0]):
            linear.bias.normal_()
    return dyn


def three_maps(dyn: KoopmanDynamics, u: torch.Tensor) -> torch.Tensor:
    """Koopman mode's increment as kbk computed it before the fold: lift, advance, unlift, one after another."""
    return dyn.unlift(dyn.advance(dyn.lift(u))) - u


def rows(n: int, dtype: torch.dtype) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(n // 8, 8, D_MODEL, dtype=dtype)


def folded(dyn: KoopmanDynamics, u: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return dyn.increment(u)


def test_the_fold_is_the_same_affine_map_in_float64():
    dyn = dynamics(torch.float64)
    u = rows(4 * K, torch.float64)
    with torch.no_grad():
        expected = three_maps(dyn, u)
    # float64 rounding of k-term sums of O(1) values: ~1e-15 per entry, far below 1e-12 of the increment's scale.
    assert (folded(dyn, u) - expected).abs().max() <= 1e-12 * expected.abs().max()


def test_in_float32_the_fold_is_as_accurate_as_the_three_maps():
    """The float32 tolerance: the fold's error against the float64 result is at most twice the three maps' own
    float32 error (both round k-term sums; the fold's M rounds two of them, the three maps round three in a row).
    An error in the fold (a wrong transpose, a missing bias) would be O(1), not a few float32 ulps."""
    dyn32 = dynamics(torch.float32, k=256)
    dyn64 = copy.deepcopy(dyn32).double()  # the same weights, exactly
    u64 = rows(1024, torch.float64)
    u32 = u64.float()
    with torch.no_grad():
        exact = three_maps(dyn64, u64)
        today = three_maps(dyn32, u32).double()
    now = folded(dyn32, u32).double()
    today_error = (today - exact).abs().max()
    assert 0 < today_error < 1e-5 * exact.abs().max()  # float32 rounding, not bigger
    assert (now - exact).abs().max() <= 2 * today_error


def test_with_autograd_koopman_mode_runs_the_three_maps_and_trains_each():
    dyn = dynamics(torch.float32)
    u = rows(4 * K, torch.float32)
    out = dyn.increment(u)
    assert torch.equal(out, three_maps(dyn, u))  # bit for bit the computation before the fold
    out.square().sum().backward()
    for param in (dyn.operator, dyn.lift[2].weight, dyn.unlift[0].weight):
        assert param.grad is not None and param.grad.abs().sum() > 0


def test_up_to_k_rows_the_three_maps_run_and_beyond_k_the_fold_saves_two_matmuls_per_row():
    dyn = dynamics(torch.float32)
    few = rows(K, torch.float32)
    with torch.no_grad():
        assert torch.equal(folded(dyn, few), three_maps(dyn, few))  # forming M would cost more than it saves
    many = rows(16 * K, torch.float32)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        dyn.increment(many)
    n = 16 * K
    outer = 2 * n * D_MODEL * K * 2  # φ's first and ψ's last Linear, in both computations
    # M (two k x k products) and c (a k-vector through K and W3), then one k x k map per row, not three
    assert counter.get_total_flops() <= outer + 2 * (2 * K**3 + 2 * K**2) + 2 * n * K * K
    assert counter.get_total_flops() < outer + 3 * 2 * n * K * K


def reference_koopman_logits(model: KoopmanResNetBKLM, idx: torch.Tensor) -> torch.Tensor:
    """Koopman-mode logits from the model's parameters in float64, written out from the definitions: each block
    x ← x + ψ(K φ(u)) − u with u = LN(x), φ = Linear∘tanh∘Linear, ψ likewise; then the final LayerNorm and head."""
    p = {name: t.detach().double() for name, t in model.state_dict().items() if torch.is_tensor(t)}
    d = model.config.d_model

    def linear(x, name):
        return x @ p[f"{name}.weight"].T + p[f"{name}.bias"]

    def norm(x, name):
        return F.layer_norm(x, (d,), p[f"{name}.weight"], p[f"{name}.bias"])

    x = p["token_embedding.weight"][idx] + p["position_embedding.weight"][: idx.shape[1]]
    for layer in range(len(model.blocks)):
        b = f"blocks.{layer}"
        u = norm(x, f"{b}.norm")
        z = linear(torch.tanh(linear(u, f"{b}.koopman.lift.0")), f"{b}.koopman.lift.2")
        z_next = z @ p[f"{b}.koopman.operator"].T
        x = x + linear(torch.tanh(linear(z_next, f"{b}.koopman.unlift.0")), f"{b}.koopman.unlift.2") - u
    return linear(norm(x, "final_norm"), "lm_head")


def test_koopman_mode_logits_match_a_float64_reference():
    torch.manual_seed(0)
    model = KoopmanResNetBKLM(50, d_model=D_MODEL, n_layers=2, n_seq=16, num_experts=2, dropout=0.0,
                              koopman=KoopmanConfig(dim=32, init_scale=1.0)).eval()
    idx = torch.randint(0, 50, (6, 16))  # 96 rows per block: more than k, so the fold runs
    with torch.inference_mode():
        logits = model(idx, modes="koopman").logits.double()
    reference = reference_koopman_logits(model, idx)
    assert logits.shape == reference.shape
    assert (logits - reference).abs().max() == pytest.approx(0, abs=1e-4 * reference.abs().max().item())
    standard = model(idx).logits.detach().double()
    assert (standard - reference).abs().max() > 1e-2  # the reference is Koopman mode, not the standard model
