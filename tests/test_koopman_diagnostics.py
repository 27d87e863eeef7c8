"""Koopman diagnostics against closed forms and independent (numpy) references."""

import math
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

from kbk.koopman.diagnostics import (
    condition_number,
    count_outside_unit_circle,
    effective_rank,
    eigenvalues,
    identity_one_step_error,
    koopman_operator_stats,
    operator_drift,
    operator_norm,
    plot_eigenvalues,
    relative_one_step_error,
    saturation_fraction,
    spectral_radius,
)


def rotations(angles: list[float], scale: float) -> torch.Tensor:
    """Block-diagonal scale·R(θ) blocks: eigenvalues scale·e^{±iθ}."""
    blocks = [
        scale * torch.tensor([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]], dtype=torch.float64)
        for t in angles
    ]
    return torch.block_diag(*blocks)


def random_orthogonal(k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(k, k, generator=g, dtype=torch.float64)).Q


def with_singular_values(s: list[float], m: int, n: int, seed: int) -> torch.Tensor:
    """An m×n matrix whose singular values are exactly `s` (rest zero), in random orthogonal bases."""
    u, v = random_orthogonal(m, seed)[:, : len(s)], random_orthogonal(n, seed + 1)[:, : len(s)]
    return u @ torch.diag(torch.tensor(s, dtype=torch.float64)) @ v.mT


# ---- operator --------------------------------------------------------------------------------


def test_spectrum_of_a_scaled_rotation():
    angles = [0.3, 1.1, 2.5]
    k = rotations(angles, 0.9)
    q = random_orthogonal(6, seed=0)
    k = q @ k @ q.mT  # a change of basis keeps the spectrum
    lam = eigenvalues(k)
    assert lam.is_complex()
    expected = sorted(a for t in angles for a in (t, -t))
    assert np.allclose(sorted(lam.angle().tolist()), expected, atol=1e-10)
    assert spectral_radius(k) == pytest.approx(0.9, abs=1e-12)
    assert count_outside_unit_circle(k) == 0
    assert count_outside_unit_circle(rotations(angles, 1.1)) == 6
    assert count_outside_unit_circle(torch.eye(4)) == 0  # |λ| = 1 exactly is on the circle, not outside


def test_operator_norm_is_the_largest_singular_value_not_the_spectral_radius():
    nilpotent = torch.tensor([[0.0, 2.0], [0.0, 0.0]])  # radius 0, yet it doubles e₂
    assert operator_norm(nilpotent) == pytest.approx(2.0)
    assert spectral_radius(nilpotent) == pytest.approx(0.0, abs=1e-12)
    k = with_singular_values([5.0, 3.0, 1.0], 3, 3, seed=2)
    assert operator_norm(k) == pytest.approx(5.0, rel=1e-12)
    assert operator_norm(k) == pytest.approx(np.linalg.norm(k.numpy(), 2), rel=1e-12)


def test_operator_drift_columns():
    k0 = torch.eye(4)
    k = k0.clone()
    k[0, 1] = 0.5
    drift = operator_drift(k, k0)
    assert drift == pytest.approx(
        {
            "mean_abs_change": 0.5 / 16,
            "final_norm": math.sqrt(4.25),
            "relative_change": 0.5 / 2,  # ‖ΔK‖_F / ‖I₄‖_F
            "spectral_radius": 1.0,  # upper triangular with unit diagonal
        }
    )


# ---- prediction ------------------------------------------------------------------------------


def test_one_step_error_uses_z_next_equals_k_z():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(5, 5, generator=g, dtype=torch.float64)
    z = torch.randn(4, 30, 5, generator=g, dtype=torch.float64)  # (batch, tokens, k) is flattened
    z_next = z @ a.mT
    assert relative_one_step_error(z, z_next, a) < 1e-12
    assert relative_one_step_error(z, z_next, a.mT) > 0.1  # the transposed convention is caught
    noise = 0.01 * torch.randn(z.shape, generator=g, dtype=torch.float64)
    expected = float(noise.norm() / (z_next + noise).norm())
    assert relative_one_step_error(z, z_next + noise, a) == pytest.approx(expected, rel=1e-10)


def test_identity_baseline():
    z = torch.randn(50, 6)
    assert identity_one_step_error(z, 2 * z) == pytest.approx(0.5, rel=1e-6)  # ‖2Z − Z‖ / ‖2Z‖
    assert identity_one_step_error(z, z) == 0.0
    a = torch.randn(6, 6)
    assert identity_one_step_error(z, z @ a.mT) == pytest.approx(
        relative_one_step_error(z, z @ a.mT, torch.eye(6)), rel=1e-12
    )


# ---- data ------------------------------------------------------------------------------------


@pytest.mark.parametrize("r", [1, 3, 7])
def test_effective_rank_of_equal_singular_values_is_the_rank(r):
    z = with_singular_values([2.5] * r, 40, 10, seed=4)
    assert effective_rank(z) == pytest.approx(r, rel=1e-6)


def test_effective_rank_closed_form_and_zero():
    z = with_singular_values([3.0, 1.0], 20, 8, seed=5)
    p = np.array([0.75, 0.25])
    assert effective_rank(z) == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-6)
    assert effective_rank(torch.zeros(5, 3)) == 0.0


def test_condition_number():
    z = with_singular_values([10.0, 2.0, 1.0], 30, 3, seed=6)
    assert condition_number(z) == pytest.approx(10.0, rel=1e-10)
    w = torch.randn(40, 7, dtype=torch.float64)
    assert condition_number(w) == pytest.approx(np.linalg.cond(w.numpy()), rel=1e-8)
    assert condition_number(with_singular_values([1.0, 1.0], 30, 3, seed=7)) > 1e12  # rank 2 of 3


def test_saturation_fraction():
    x = torch.tensor([0.0, 0.5, 0.995, -0.999, 1.0, -0.2, 0.99, -1.0])
    assert saturation_fraction(x) == pytest.approx(4 / 8)  # 0.99 itself is not above the threshold
    assert saturation_fraction(torch.tanh(torch.full((3, 4), 10.0))) == 1.0
    assert saturation_fraction(x, threshold=0.4) == pytest.approx(6 / 8)


# ---- combined stats --------------------------------------------------------------------------


def test_koopman_operator_stats_combines_the_pieces():
    k = 0.9 * random_orthogonal(8, seed=8).float()
    k0 = torch.eye(8)
    operator_only = koopman_operator_stats(k, k0)
    assert set(operator_only) == {
        "spectral_radius",
        "n_unstable",
        "norm_2",
        "norm_fro",
        "drift_rel",
        "mean_abs_change",
    }
    assert operator_only["spectral_radius"] == pytest.approx(0.9, rel=1e-6)
    assert operator_only["norm_2"] == pytest.approx(0.9, rel=1e-6)
    assert operator_only["n_unstable"] == 0.0
    assert operator_only["drift_rel"] == pytest.approx(operator_drift(k, k0)["relative_change"])

    z = torch.randn(3, 40, 8)
    z_next = z @ k.mT
    stats = koopman_operator_stats(k, k0, z, z_next)
    assert stats["one_step_rel_err"] < 1e-6
    assert stats["one_step_rel_err_identity"] == pytest.approx(identity_one_step_error(z, z_next))
    assert stats["effective_rank"] == pytest.approx(effective_rank(z))
    assert stats["condition"] == pytest.approx(condition_number(z))
    assert all(isinstance(v, float) for v in stats.values())


# ---- plot ------------------------------------------------------------------------------------


def test_plot_eigenvalues_writes_a_png(tmp_path):
    operators = {"layer0": rotations([0.4, 1.2], 0.9), "layer1": torch.eye(4) + 0.05 * torch.randn(4, 4)}
    path = plot_eigenvalues(operators, tmp_path / "plots" / "eigenvalues.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1000, 520)  # the full spectrum beside the zoom on λ = 1


def test_importing_the_koopman_modules_does_not_import_matplotlib():
    code = (
        "import sys, kbk.koopman.diagnostics, kbk.koopman.dmd; "
        "sys.exit(1 if any(m.startswith('matplotlib') for m in sys.modules) else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
