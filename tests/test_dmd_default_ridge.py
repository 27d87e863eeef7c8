"""The DMD estimator's DEFAULT ridge: the bias it puts on an exactly linear system, and the variance it buys.

conf/dmd/default.yaml documents both numbers; these tests pin them, so changing the default (or the estimator)
without updating that comment fails here.
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from kbk.koopman.config import DMDConfig
from kbk.koopman.dmd import StreamingDMD
from kbk.paths import CONF_DIR

DEFAULT_RIDGE = OmegaConf.load(CONF_DIR / "dmd" / "default.yaml").ridge


def operator_with_radius(k: int, radius: float, seed: int) -> torch.Tensor:
    a = torch.randn(k, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return radius * a / torch.linalg.eigvals(a).abs().max()


def estimate(z: torch.Tensor, z_next: torch.Tensor, **kwargs) -> torch.Tensor:
    dmd = StreamingDMD(z.shape[1], buffer_size=z.shape[0], alpha=1.0, **kwargs)
    dmd.push(z.float(), z_next.float())
    return dmd.estimate().double()


def relative(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(x - y) / torch.linalg.matrix_norm(y))


def test_the_default_is_one_value_everywhere():
    assert DEFAULT_RIDGE == DMDConfig().ridge == StreamingDMD(4).config.ridge == 1e-3


@pytest.mark.parametrize("k", [16, 256])
def test_default_ridge_biases_an_exactly_linear_system_by_about_ridge_times_its_distance_from_identity(k):
    """With isotropic states and many more pairs than k, G = ZᵀZ ≈ M·I and λ = ridge·trace(G)/k ≈ ridge·M, so
    K = (AG + λI)(G + λI)⁻¹ ≈ (A + ridge·I)/(1 + ridge): K − A ≈ ridge/(1 + ridge)·(I − A), a pull toward the
    prior I of 0.1% of the way (a little more with finitely many pairs: G⁻¹ is larger than 1/M on average).
    Measured with M = 16k pairs: 1.72e-3 (k = 16) and 1.71e-3 (k = 256) relative, against < 1e-6 at ridge 1e-7:
    no noise and no nonlinearity, so all of it is the ridge's bias."""
    a = operator_with_radius(k, 0.9, seed=0)
    z = torch.randn(16 * k, k, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    bias = relative(estimate(z, z @ a.mT), a)
    predicted = DEFAULT_RIDGE / (1 + DEFAULT_RIDGE) * relative(torch.eye(k, dtype=torch.float64), a)
    assert bias == pytest.approx(predicted, rel=0.2)
    assert 1e-3 < bias < 2e-3
    assert relative(estimate(z, z @ a.mT, ridge=1e-7), a) < 1e-6  # the bias is the ridge's, not the solver's


def test_default_ridge_keeps_a_noisy_estimate_stable_where_a_tiny_ridge_amplifies_the_noise():
    """The variance side: lifted states are anisotropic (tanh features span decades of scale). With singular
    directions from 1 down to 1e-4 and 1% noise on z', 1024 pairs at k = 256: ridge 1e-7 fits the noise in the
    weak directions (spectral radius 2.65, relative error 2.5 with A's radius 0.9); the default leaves them at
    the prior (radius 1.0)."""
    k, m = 256, 1024
    a = operator_with_radius(k, 0.9, seed=0)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(m, k, generator=g, dtype=torch.float64) * torch.logspace(0, -4, k, dtype=torch.float64)
    z_next = z @ a.mT
    z_next = z_next + 0.01 * z_next.std() * torch.randn(m, k, generator=g, dtype=torch.float64)
    radius = {r: float(torch.linalg.eigvals(estimate(z, z_next, ridge=r)).abs().max()) for r in (1e-7, DEFAULT_RIDGE)}
    assert radius[1e-7] > 1.5
    assert radius[DEFAULT_RIDGE] < 1.01
