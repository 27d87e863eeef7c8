"""Streaming DMD: recovers known linear operators in the `z' = K z` convention, fills at any batch
size, regularises rank-deficient buffers toward I, rejects bad updates loudly, and round-trips through
state_dict."""

import io
import math

import numpy as np
import pytest
import torch

from kbk.errors import SettingError
from kbk.koopman.diagnostics import identity_one_step_error, relative_one_step_error
from kbk.koopman.dmd import StreamingDMD, lstsq_operator

ESTIMATORS = ["lstsq", "ridge", "forgetting"]


def random_operator(k: int, radius: float, seed: int) -> torch.Tensor:
    """A non-symmetric (so K and Kᵀ differ) float64 matrix with the given spectral radius."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(k, k, generator=g, dtype=torch.float64)
    return radius * a / torch.linalg.eigvals(a).abs().max()


def linear_pairs(a: torch.Tensor, m: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows-as-samples pairs of `z' = A z`: Z' = Z Aᵀ."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(m, a.shape[0], generator=g, dtype=torch.float64)
    return z, z @ a.mT


def rel(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double(), y.double()
    return float(torch.linalg.matrix_norm(x - y) / torch.linalg.matrix_norm(y))


def numpy_ridge(z: np.ndarray, z_next: np.ndarray, ridge: float) -> np.ndarray:
    """Independent reference: argmin_K ‖Z' − Z Kᵀ‖² + λ‖K − I‖² with λ = ridge · trace(ZᵀZ) / k."""
    k = z.shape[1]
    gram, cross = z.T @ z, z_next.T @ z
    lam = ridge * np.trace(gram) / k
    return (cross + lam * np.eye(k)) @ np.linalg.inv(gram + lam * np.eye(k))


# ---- recovery and convention -----------------------------------------------------------------


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_alpha_one_recovers_a_non_symmetric_operator_not_its_transpose(estimator):
    k, m = 32, 512
    a = random_operator(k, 0.9, seed=0)
    assert rel(a.mT, a) > 0.5  # a transposed-convention bug would be visible
    dmd = StreamingDMD(k, buffer_size=m, alpha=1.0, estimator=estimator, ridge=1e-7)
    for seed in range(4):  # several pushes: the forgetting estimator only sees Grams, the buffer wraps once
        dmd.push(*[t.float() for t in linear_pairs(a, m // 2, seed)])
    operator = torch.zeros(k, k)
    assert dmd.update(operator)
    assert rel(operator, a) <= 1e-3
    assert rel(operator, a.mT) > 0.5
    assert rel(dmd.estimate(), a) <= 1e-3


def test_dmd_estimate_beats_the_identity_baseline_on_held_out_pairs():
    k = 32
    a = random_operator(k, 0.9, seed=1)
    dmd = StreamingDMD(k, buffer_size=200)  # default ridge estimator and strength
    dmd.push(*linear_pairs(a, 200, seed=2))
    z, z_next = linear_pairs(a, 300, seed=3)
    k_dmd = dmd.estimate()
    assert relative_one_step_error(z, z_next, k_dmd) < 0.01
    assert identity_one_step_error(z, z_next) > 0.5
    # Applying the estimate in the wrong convention (Z K instead of Z Kᵀ) is no better than doing nothing.
    assert relative_one_step_error(z, z_next, k_dmd.mT) > 0.5


def test_lstsq_operator_matches_torch_and_numpy_least_squares():
    g = torch.Generator().manual_seed(4)
    z = torch.randn(50, 8, generator=g, dtype=torch.float64)
    z_next = torch.randn(50, 8, generator=g, dtype=torch.float64)  # not linear: a genuine least-squares fit
    k_est, condition = lstsq_operator(z, z_next)
    # Z' ≈ Z Kᵀ, so Kᵀ is the least-squares solution X of Z X = Z'.
    assert torch.allclose(k_est, torch.linalg.lstsq(z, z_next).solution.mT, atol=1e-10)
    k_numpy = np.linalg.lstsq(z.numpy(), z_next.numpy(), rcond=None)[0].T
    assert np.allclose(k_est.numpy(), k_numpy, atol=1e-10)
    assert condition == pytest.approx(float(torch.linalg.cond(z.mT @ z)), rel=1e-6)


def test_lstsq_operator_is_the_minimum_norm_pseudo_inverse_when_rank_deficient():
    g = torch.Generator().manual_seed(5)
    z = torch.randn(5, 12, generator=g, dtype=torch.float64)  # fewer pairs than dimensions
    z_next = torch.randn(5, 12, generator=g, dtype=torch.float64)
    k_est, _ = lstsq_operator(z, z_next)
    assert torch.allclose(k_est, z_next.mT @ torch.linalg.pinv(z).mT, atol=1e-10)
    assert torch.allclose(k_est, torch.from_numpy(z_next.numpy().T @ np.linalg.pinv(z.numpy()).T), atol=1e-10)
    assert int(torch.linalg.matrix_rank(k_est)) == 5


def test_lstsq_threshold_drops_tiny_singular_directions():
    g = torch.Generator().manual_seed(6)
    z = torch.randn(40, 6, generator=g, dtype=torch.float64)
    z[:, 0] *= 1e-9  # a direction far below svd_rtol = 1e-6
    z_next = torch.randn(40, 6, generator=g, dtype=torch.float64)
    k_est, _ = lstsq_operator(z, z_next, rtol=1e-6)
    assert torch.allclose(k_est, z_next.mT @ torch.linalg.pinv(z, rtol=1e-6).mT, atol=1e-10)
    assert int(torch.linalg.matrix_rank(k_est)) == 5


def test_ridge_estimate_matches_an_independent_closed_form_and_ignores_scale():
    g = torch.Generator().manual_seed(7)
    z = torch.randn(60, 10, generator=g, dtype=torch.float64)
    z_next = torch.tanh(z @ torch.randn(10, 10, generator=g, dtype=torch.float64))  # nonlinear pairs
    dmd = StreamingDMD(10, buffer_size=60, ridge=0.05)
    dmd.push(z, z_next)
    reference = numpy_ridge(z.float().double().numpy(), z_next.float().double().numpy(), 0.05)
    assert np.allclose(dmd.estimate().double().numpy(), reference, atol=1e-5)
    scaled = StreamingDMD(10, buffer_size=60, ridge=0.05)
    scaled.push(100 * z, 100 * z_next)  # λ scales with trace(G): a rescaled lift gives the same operator
    assert torch.allclose(scaled.estimate(), dmd.estimate(), atol=1e-5)


def test_forgetting_estimator_is_ridge_on_exponentially_weighted_pushes():
    k, rho, ridge = 6, 0.8, 0.01
    g = torch.Generator().manual_seed(8)
    pushes = [(torch.randn(m, k, generator=g), torch.randn(m, k, generator=g)) for m in (30, 50, 20)]
    dmd = StreamingDMD(k, estimator="forgetting", forgetting=rho, ridge=ridge)
    for z, z_next in pushes:
        dmd.push(z, z_next)
    assert dmd.n_pairs == 100 and dmd.z.shape[0] == 0  # no pair storage
    # Push j of n carries weight (1 − ρ) ρ^(n−1−j) / M_j: stacking sqrt(weight)-scaled rows gives the same
    # Grams.
    n = len(pushes)
    w = [math.sqrt((1 - rho) * rho ** (n - 1 - j) / len(z)) for j, (z, _) in enumerate(pushes)]
    z_w = torch.cat([wj * z.double() for wj, (z, _) in zip(w, pushes, strict=True)]).numpy()
    z_next_w = torch.cat([wj * zn.double() for wj, (_, zn) in zip(w, pushes, strict=True)]).numpy()
    assert np.allclose(dmd.estimate().double().numpy(), numpy_ridge(z_w, z_next_w, ridge), atol=1e-5)


# ---- rank-deficient buffers --------------------------------------------------------------------


def test_ridge_keeps_the_spectrum_when_the_buffer_is_smaller_than_koopman_dim_and_lstsq_collapses():
    k, m = 64, 20
    g = torch.Generator().manual_seed(9)
    # Identity-like truth: eigenvalues within 0.1 of 0.95.
    a = (
        0.95 * torch.eye(k, dtype=torch.float64)
        + 0.1 * torch.randn(k, k, generator=g, dtype=torch.float64) / 8
    )
    z, z_next = (t.float().double() for t in linear_pairs(a, m, seed=10))  # exactly what the buffer stores
    ridge, lstsq = StreamingDMD(k, buffer_size=m), StreamingDMD(k, buffer_size=m, estimator="lstsq")
    for dmd in (ridge, lstsq):
        dmd.push(z, z_next)
    lam_ridge = torch.linalg.eigvals(ridge.estimate().double()).abs()
    lam_lstsq = torch.linalg.eigvals(lstsq.estimate().double()).abs()
    assert lam_ridge.min() > 0.5 and lam_ridge.max() < 1.2
    assert int((lam_lstsq < 1e-3).sum()) >= k - m  # the unseen directions collapse to 0
    # Both fit the pairs they saw; ridge also leaves unseen directions where the prior I puts them.
    unseen = torch.linalg.svd(z, full_matrices=True).Vh[m:]  # rows span the orthogonal complement of the data
    assert torch.allclose(unseen @ ridge.estimate().double().mT, unseen, atol=1e-4)
    assert relative_one_step_error(z, z_next, ridge.estimate()) < 0.05


# ---- buffer ----------------------------------------------------------------------------------


def test_one_push_larger_than_the_buffer_fills_it_with_a_random_subset():
    k = 8
    z = torch.arange(4096.0)[:, None].repeat(1, k)  # row i is all i, so stored rows can be traced back
    dmd = StreamingDMD(k, buffer_size=100)
    torch.manual_seed(0)
    dmd.push(z, z + 0.5)
    assert dmd.n_pairs == 100 and dmd.n_seen == 4096
    labels = dmd.z[:, 0]
    assert len(set(labels.tolist())) == 100  # distinct rows: a subset, not repeats or batch means
    assert torch.equal(dmd.z_next, dmd.z + 0.5)  # pairs stay paired
    assert labels.max() > 2048  # not just the head of the batch
    assert dmd.update(torch.eye(k))
    # The subset comes from the global RNG, so restoring its state replays it.
    replay = StreamingDMD(k, buffer_size=100)
    torch.manual_seed(0)
    replay.push(z, z + 0.5)
    assert torch.equal(replay.z, dmd.z)


def test_small_pushes_fill_the_buffer_and_wrap_around_keeps_the_most_recent_pairs():
    k = 4
    dmd = StreamingDMD(k, buffer_size=100)
    for start in (0, 40, 80):
        z = torch.arange(start, start + 40.0)[:, None].repeat(1, k)
        dmd.push(z, -z)
        assert dmd.n_pairs == min(start + 40, 100)
    assert sorted(dmd.z[:, 0].tolist()) == list(range(20, 120))
    assert torch.equal(dmd.z_next, -dmd.z)


def test_push_flattens_leading_dims_and_checks_shapes():
    dmd = StreamingDMD(8, buffer_size=1000)
    dmd.push(torch.randn(4, 16, 8), torch.randn(4, 16, 8))
    assert dmd.n_pairs == 64
    with pytest.raises(ValueError, match="same shape"):
        dmd.push(torch.randn(5, 8), torch.randn(5, 7))


def test_push_detaches():
    z = torch.randn(10, 4, requires_grad=True)
    dmd = StreamingDMD(4, buffer_size=10)
    dmd.push(z * 2, z * 3)
    assert not dmd.z.requires_grad and not dmd.estimate().requires_grad


# ---- update, guardrails ----------------------------------------------------------------------


def test_alpha_blends_exactly():
    k = 6
    g = torch.Generator().manual_seed(11)
    dmd = StreamingDMD(k, buffer_size=50, alpha=0.3)
    dmd.push(torch.randn(50, k, generator=g), torch.randn(50, k, generator=g))
    k0 = torch.randn(k, k, generator=g)
    operator = k0.clone()
    assert dmd.update(operator)
    assert torch.allclose(operator, 0.7 * k0 + 0.3 * dmd.estimate(), atol=1e-6, rtol=0)
    assert dmd.n_accepted == 1 and dmd.n_rejected == 0


def test_update_without_pairs_is_rejected():
    dmd = StreamingDMD(4)
    assert dmd.estimate() is None
    operator = torch.eye(4)
    assert not dmd.update(operator)
    assert (
        torch.equal(operator, torch.eye(4)) and dmd.n_rejected == 1 and "no pairs" in dmd.last_reject_reason
    )


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_non_finite_pairs_are_rejected_and_leave_the_operator_unchanged(estimator):
    k = 6
    g = torch.Generator().manual_seed(12)
    z, z_next = torch.randn(40, k, generator=g), torch.randn(40, k, generator=g)
    dmd = StreamingDMD(k, buffer_size=100, estimator=estimator)
    dmd.push(z, z_next)
    before = dmd.estimate()
    bad = z_next.clone()
    bad[3, 2] = float("nan")
    dmd.push(z, bad)
    operator = torch.randn(k, k, generator=g)
    k0 = operator.clone()
    assert not dmd.update(operator)
    assert torch.equal(operator, k0)
    assert dmd.n_rejected == 1 and dmd.n_accepted == 0
    assert "non-finite pairs" in dmd.last_reject_reason
    if estimator == "forgetting":  # the bad push never reached the Grams, so the estimator recovers at once
        assert torch.equal(dmd.estimate(), before)
        assert dmd.update(operator)


def test_ill_conditioned_systems_are_rejected():
    k = 16
    g = torch.Generator().manual_seed(13)
    # No ridge and fewer pairs than dimensions: the Gram is singular.
    dmd = StreamingDMD(k, buffer_size=10, ridge=0.0)
    dmd.push(torch.randn(10, k, generator=g), torch.randn(10, k, generator=g))
    operator = torch.eye(k)
    assert not dmd.update(operator)
    assert torch.equal(operator, torch.eye(k))
    assert dmd.n_rejected == 1 and "ill-conditioned" in dmd.last_reject_reason
    # lstsq keeping a direction ~1e-6 times weaker than the rest: Gram condition ~1e12 > 1e8.
    z = torch.randn(200, k, generator=g, dtype=torch.float64)
    z[:, 0] *= 1e-6
    strict = StreamingDMD(k, buffer_size=200, estimator="lstsq", svd_rtol=1e-9)
    loose = StreamingDMD(k, buffer_size=200, estimator="lstsq", svd_rtol=1e-9, max_condition=1e14)
    for dmd in (strict, loose):
        dmd.push(z, z)
    assert not strict.update(operator) and "ill-conditioned" in strict.last_reject_reason
    assert strict.stats()["condition"] > 1e11
    assert loose.update(operator)


def test_linalg_errors_are_counted_with_their_message_and_other_errors_propagate(monkeypatch):
    dmd = StreamingDMD(4, buffer_size=20)
    dmd.push(torch.randn(20, 4), torch.randn(20, 4))

    def failing_solve(*args, **kwargs):
        raise torch.linalg.LinAlgError("singular pivot 3")

    monkeypatch.setattr(torch.linalg, "solve", failing_solve)
    operator = torch.eye(4)
    assert not dmd.update(operator)
    assert torch.equal(operator, torch.eye(4))
    assert dmd.n_rejected == 1 and "singular pivot 3" in dmd.last_reject_reason

    def buggy_solve(*args, **kwargs):
        raise RuntimeError("a bug, not a numerical failure")

    monkeypatch.setattr(torch.linalg, "solve", buggy_solve)
    with pytest.raises(RuntimeError, match="a bug"):
        dmd.update(operator)


def test_step_updates_every_interval():
    dmd = StreamingDMD(4, buffer_size=20, update_interval=3)
    dmd.push(torch.randn(20, 4), torch.randn(20, 4))
    operator = torch.eye(4)
    results = [dmd.step(operator) for _ in range(6)]
    assert results == [None, None, True, None, None, True]
    assert dmd.n_accepted == 2


@pytest.mark.parametrize(
    "kwargs",
    [
        {"estimator": "dmd"},
        {"alpha": 0.0},
        {"alpha": 1.5},
        {"buffer_size": 0},
        {"forgetting": 1.0},
        {"ridge": -1.0},
        {"update_interval": 0},
        {"svd_rtol": 1.0},
        {"max_condition": 1.0},
    ],
)
def test_bad_settings_name_the_knob(kwargs):
    (name, value), = kwargs.items()
    with pytest.raises(SettingError, match=rf"^{name}={value!r} is not allowed: it must be "):
        StreamingDMD(8, **kwargs)


# ---- state -----------------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_state_dict_round_trip_restores_the_estimator_exactly(estimator):
    k = 8
    g = torch.Generator().manual_seed(14)
    dmd = StreamingDMD(k, buffer_size=30, estimator=estimator, update_interval=2)
    operator = torch.eye(k)
    assert not dmd.update(operator)  # no pairs yet: sets a reason
    for _ in range(3):
        dmd.push(torch.randn(25, k, generator=g), torch.randn(25, k, generator=g))
        dmd.step(operator)
    saved = io.BytesIO()
    torch.save(dmd.state_dict(), saved)
    saved.seek(0)
    restored = StreamingDMD(k, buffer_size=30, estimator=estimator, update_interval=2)
    restored.load_state_dict(torch.load(saved, weights_only=True))

    assert torch.equal(restored.estimate(), dmd.estimate())
    assert restored.stats() == pytest.approx(dmd.stats(), nan_ok=True)
    assert restored.last_reject_reason == dmd.last_reject_reason == "no pairs yet"
    assert restored.n_steps == dmd.n_steps == 3
    # The restored estimator carries on identically: same write position, same step phase.
    z, z_next = torch.randn(12, k, generator=g), torch.randn(12, k, generator=g)
    op_a, op_b = operator.clone(), operator.clone()
    for d, op in ((dmd, op_a), (restored, op_b)):
        d.push(z, z_next)
        assert d.step(op) is True
    assert torch.equal(op_a, op_b)
    for name, buf in dmd.named_buffers():
        assert torch.equal(buf, dict(restored.named_buffers())[name]), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_cuda_with_cuda_pairs_and_operator():
    k = 16
    a = random_operator(k, 0.9, seed=15)
    dmd = StreamingDMD(k, buffer_size=256, alpha=1.0, ridge=1e-7).cuda()
    z, z_next = linear_pairs(a, 4096, seed=16)
    dmd.push(z.float().cuda(), z_next.float().cuda())
    operator = torch.zeros(k, k, device="cuda")
    assert dmd.update(operator)
    assert rel(operator.cpu(), a) <= 1e-3


def test_ridge_update_skips_the_eigendecomposition_when_the_bound_suffices_and_reports_the_exact_condition(
    monkeypatch,
):
    # λ = ridge·trace(G)/k and λ_max(G) ≤ trace(G) bound the condition by 1 + k/ridge = 1 + 16/1e-3 < 1e8: the
    # training step needs no eigvalsh; the condition number is computed (exactly) only when someone reads it.
    k = 16
    g = torch.Generator().manual_seed(17)
    z, z_next = torch.randn(40, k, generator=g), torch.randn(40, k, generator=g)
    lazy = StreamingDMD(k, buffer_size=40, ridge=1e-3)
    lazy.push(z, z_next)
    calls = []
    real_eigvalsh = torch.linalg.eigvalsh
    monkeypatch.setattr(torch.linalg, "eigvalsh", lambda a: calls.append(1) or real_eigvalsh(a))
    assert lazy.update(torch.eye(k))
    assert calls == []
    z64 = z.double()
    gram = z64.mT @ z64
    system = gram + 1e-3 * torch.trace(gram) / k * torch.eye(k, dtype=torch.float64)
    eig = real_eigvalsh(system)
    assert lazy.stats()["condition"] == float(eig[-1] / eig[0])
    assert len(calls) == 1
    assert float(lazy.state_dict()["last_condition"]) == float(eig[-1] / eig[0])  # settled before saving
    # A bound above max_condition: the exact check runs at once (and refuses: 10 pairs leave G singular), as before.
    strict = StreamingDMD(k, buffer_size=10, ridge=1e-3, max_condition=100.0)
    strict.push(z[:10], z_next[:10])
    assert not strict.update(torch.eye(k)) and "ill-conditioned" in strict.last_reject_reason
    assert len(calls) == 2


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_estimate_after_an_update_is_that_updates_estimate_without_a_new_solve(estimator, monkeypatch):
    k = 8
    g = torch.Generator().manual_seed(18)
    dmd = StreamingDMD(k, buffer_size=30, estimator=estimator)
    dmd.push(torch.randn(25, k, generator=g), torch.randn(25, k, generator=g))
    fresh = dmd.estimate()
    assert dmd.update(torch.eye(k))
    monkeypatch.setattr(StreamingDMD, "_solve", lambda self, *a: pytest.fail("solved again"))
    assert torch.equal(dmd.estimate(), fresh)
    monkeypatch.undo()
    dmd.push(torch.randn(5, k, generator=g), torch.randn(5, k, generator=g))  # new data: a new solve
    assert not torch.equal(dmd.estimate(), fresh)
