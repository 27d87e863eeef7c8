"""The settings of the Koopman companions (`KoopmanConfig`) and of their streaming DMD estimator (`DMDConfig`),
one dataclass each, handed whole to `KoopmanDynamics` and `StreamingDMD`.

Torch-free, so the config schema (`kbk/config.py`) can use them without importing torch. Each checks its own
ranges when built and raises `kbk.errors.SettingError` (a `ValueError`) naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from kbk.errors import require, require_choice


class OperatorUpdate(str, Enum):
    """Who writes the operator K: the optimiser (DMD only diagnoses), DMD (K is a buffer), or both."""

    gradient = "gradient"
    dmd = "dmd"
    both = "both"


class DMDEstimator(str, Enum):
    ridge = "ridge"
    lstsq = "lstsq"
    forgetting = "forgetting"


#: K0 = I + init_scale·randn/√k (spectral radius ≈ 1 + init_scale), or a Haar-random orthogonal matrix.
OPERATOR_INITS = ("identity_noise", "orthogonal")
#: The linear term's penalty: squared error, or the seed's Huber (smooth L1 with beta 1, mean over entries).
LINEAR_LOSSES = ("mse", "huber")


@dataclass
class KoopmanConfig:
    enabled: bool = True
    dim: int = 256
    operator_update: OperatorUpdate = OperatorUpdate.both
    init: str = "identity_noise"  # "identity_noise" | "orthogonal"
    init_scale: float = 0.01
    detach_backbone: bool = True  # the Koopman terms do not move the language model itself
    detach_targets: bool = False  # stop-gradient through z⁺ in the linear term
    linear_weight: float = 1.0
    linear_loss: str = "mse"  # "mse" | "huber" (the seed's smooth-L1 auxiliary loss)
    recon_weight: float = 1.0
    pred_weight: float = 1.0
    sample_tokens: int | None = 256  # tokens per step for the Koopman terms; None = all
    # The Koopman terms (and their backward) on every n-th training step only; the steps between still lift the
    # sampled pairs for DMD (forward only). 1 = every step. Trades the Koopman-mode gap for speed: measured in
    # experiments/benchmarks/trial_cost_results.md.
    terms_interval: int = 1
    # The companions' initial weights, the token sample and DMD's buffer draws from a generator of their own (seeded
    # from the run's seed) instead of torch's global one: Koopman on and off then start from the same backbone and
    # see the same dropout masks at a seed. Off by default: every committed study ran with the shared stream.
    own_rng: bool = False

    def __post_init__(self) -> None:
        require(self, "dim", lambda v: v > 0, "an integer > 0")
        require_choice(self, "operator_update", OperatorUpdate)
        require_choice(self, "init", OPERATOR_INITS)
        require(self, "init_scale", lambda v: v >= 0, "a number >= 0")
        require_choice(self, "linear_loss", LINEAR_LOSSES)
        for name in ("linear_weight", "recon_weight", "pred_weight"):
            require(self, name, lambda v: v >= 0, "a number >= 0")
        require(self, "sample_tokens", lambda v: v is None or v > 0, "an integer > 0, or null for all tokens")
        require(self, "terms_interval", lambda v: v > 0, "an integer > 0 (1: the Koopman terms on every step)")


@dataclass
class DMDConfig:
    buffer_size: int = 100  # lifted pairs kept (ridge, lstsq)
    alpha: float = 0.1  # K <- (1 - alpha) K + alpha K_dmd
    estimator: DMDEstimator = DMDEstimator.ridge
    ridge: float = 1e-3  # λ = ridge · trace(ZᵀZ)/k, toward K = I
    svd_rtol: float = 1e-6  # lstsq: singular values <= svd_rtol · σ_max are dropped (0 keeps every non-zero one)
    forgetting: float = 0.99  # the forgetting estimator's ρ
    max_condition: float = 1e8  # a solve worse conditioned than this is rejected
    update_interval: int = 1  # optimiser steps between DMD updates

    def __post_init__(self) -> None:
        require(self, "buffer_size", lambda v: v > 0, "an integer > 0")
        require(self, "alpha", lambda v: 0 < v <= 1, "a number in (0, 1]")
        require_choice(self, "estimator", DMDEstimator)
        require(self, "ridge", lambda v: v >= 0, "a number >= 0")
        require(self, "svd_rtol", lambda v: 0 <= v < 1, "a number in [0, 1)")
        require(self, "forgetting", lambda v: 0 < v < 1, "a number in (0, 1)")
        require(self, "max_condition", lambda v: v > 1, "a number > 1")
        require(self, "update_interval", lambda v: v > 0, "an integer > 0")
