"""Streaming dynamic mode decomposition: estimate a layer's Koopman operator from lifted pairs.

Convention (shared by the whole of kbk): column vectors, `z' = K z`; with rows as samples, `Z' ≈ Z Kᵀ`.

`StreamingDMD` keeps token-level lifted pairs `(z, z')` (detached) and turns them into an estimate
`K_dmd`, which `update` blends into the layer's operator: `K ← (1 − α) K + α K_dmd`. Three estimators:

- `lstsq`: least squares `K = Z'ᵀ (Z⁺)ᵀ` (i.e. `Y X⁺` with `X = Zᵀ`, `Y = Z'ᵀ`) from a truncated SVD of `Z`.
  Rank-deficient data give a rank-deficient `K`: with fewer pairs than `koopman_dim` the spectrum
  collapses to 0.
- `ridge` (default): least squares with a Frobenius penalty `λ‖K − I‖²` toward the prior `K_prior = I`,
  `K = (H + λI)(G + λI)⁻¹` with `G = ZᵀZ`, `H = Z'ᵀZ`. Directions the data never reach keep eigenvalue 1.
  `λ = ridge · trace(G) / k` (the mean eigenvalue of `G`), so the penalty is relative: rescaling `z`
  leaves `K` unchanged, and the regularised Gram's condition number is at most `1 + k / ridge`.
- `forgetting`: the ridge solve on exponentially weighted Grams, `G ← ρG + (1 − ρ)ZᵀZ/M` and
  `H ← ρH + (1 − ρ)Z'ᵀZ/M` updated on every push; no pair buffer is kept.

All linear algebra is done in float64; the estimate comes back in the buffer dtype (float32 by default).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from kbk.errors import settings_or_fields
from kbk.koopman.config import DMDConfig


def lstsq_operator(z: Tensor, z_next: Tensor, rtol: float = 1e-6) -> tuple[Tensor, float]:
    """Least-squares operator `K = Z'ᵀ (Z⁺)ᵀ` from rows-as-samples pairs, and the condition it inverts.

    `Z⁺` is the pseudo-inverse from a truncated SVD: singular values `≤ rtol · σ_max` are dropped. The
    returned condition number is that of the Gram `ZᵀZ` restricted to the kept directions,
    `(σ_max / σ_min_kept)²` (infinite when nothing is kept, i.e. `Z = 0`). Computed in float64.
    """
    z, z_next = z.double(), z_next.double()
    # torch.linalg.svd returns Vᴴ (rows are right singular vectors), not V as the old torch.svd did.
    u, s, vh = torch.linalg.svd(z, full_matrices=False)
    keep = s > rtol * s[0]
    if not bool(keep.any()):
        return torch.zeros(z.shape[1], z.shape[1], dtype=z.dtype, device=z.device), math.inf
    u, s, vh = u[:, keep], s[keep], vh[keep]
    # Z⁺ = V diag(1/s) Uᵀ, and Z' ≈ Z Kᵀ gives Kᵀ = Z⁺ Z'.
    k_transposed = vh.mT @ ((u.mT @ z_next) / s[:, None])
    condition = float((s[0] / s[-1]) ** 2)
    return k_transposed.mT, condition


def regularised_condition(system: Tensor) -> float:
    """Condition number of a symmetric positive semi-definite `system` (inf when singular), by its eigenvalues."""
    eig = torch.linalg.eigvalsh(system)  # ascending
    return float(eig[-1] / eig[0]) if eig[0] > 0 else math.inf


def ridge_operator(
    gram: Tensor, cross: Tensor, ridge: float, max_condition: float = math.inf, lazy_condition: bool = False
) -> tuple[Tensor | None, float | Callable[[], float]]:
    """Ridge operator `K = (H + λI)(G + λI)⁻¹` toward `K_prior = I`, and the condition of `G + λI`.

    `gram` is `G = ZᵀZ`, `cross` is `H = Z'ᵀZ` (any common positive scaling, e.g. per-sample means, gives
    the same `K`), `λ = ridge · trace(G) / k`. When the condition number exceeds `max_condition` the solve
    is skipped (its result would be noise, or it would raise) and `None` is returned in place of `K`.
    Computed in float64.

    The condition number needs an eigendecomposition, as costly as the solve itself. But `λ_max(G) ≤ trace(G)`
    bounds it by `1 + k / ridge` whenever `0 < trace(G) < ∞`; with `lazy_condition`, when that bound is within
    `max_condition` no check is needed, and the condition comes back as a function that computes it on demand.
    """
    gram, cross = gram.double(), cross.double()
    k = gram.shape[0]
    trace = torch.trace(gram)
    lam = ridge * trace / k
    system = _plus_diagonal(gram, lam)
    if lazy_condition and ridge > 0 and 0 < float(trace) < math.inf and 1 + k / ridge <= max_condition:
        condition: float | Callable[[], float] = functools.partial(regularised_condition, system)
    else:
        condition = regularised_condition(system)
        if not condition <= max_condition:  # also catches NaN
            return None, condition
    # K (G + λI) = H + λI  ⇔  (G + λI) Kᵀ = (H + λI)ᵀ, as G + λI is symmetric: one solve, no explicit inverse.
    k_transposed = torch.linalg.solve(system, _plus_diagonal(cross, lam).mT)
    return k_transposed.mT, condition


def _plus_diagonal(a: Tensor, value: Tensor) -> Tensor:
    """`a + value · I` with one small op on the diagonal instead of building, scaling and adding an identity."""
    out = a.clone()
    out.diagonal().add_(value)
    return out


class StreamingDMD(torch.nn.Module):
    """Streaming DMD estimate of one layer's Koopman operator (`z' = K z`), with guarded in-place updates.

    Every piece of state is a registered buffer (plus the last rejection reason as extra state), so
    `state_dict()` / `load_state_dict()` restore the estimator exactly.

    Typical use, once per training step: `dmd.push(z, z_next)` then `dmd.step(layer.K)`.
    """

    def __init__(self, koopman_dim: int, config: DMDConfig | None = None, **settings: Any) -> None:
        """`config` or, in its place, `DMDConfig`'s fields as keywords (`StreamingDMD(16, buffer_size=32)`)."""
        super().__init__()
        config = settings_or_fields(DMDConfig, config, settings)
        if koopman_dim < 1:
            raise ValueError(f"koopman_dim must be positive, got {koopman_dim}")
        self.config = config
        self.koopman_dim = koopman_dim
        self.estimator = config.estimator.value  # a plain str, as compared below
        buffer_size, estimator = config.buffer_size, self.estimator

        # The forgetting estimator keeps only its Grams, so its pair storage is empty (but keeps the dtype).
        rows = 0 if estimator == "forgetting" else buffer_size
        self.register_buffer("z", torch.zeros(rows, koopman_dim))
        self.register_buffer("z_next", torch.zeros(rows, koopman_dim))
        self.register_buffer("gram", torch.zeros(koopman_dim, koopman_dim, dtype=torch.float64))
        self.register_buffer("cross", torch.zeros(koopman_dim, koopman_dim, dtype=torch.float64))
        for name in ("write_pos", "count", "n_seen", "accepted", "rejected"):
            self.register_buffer(name, torch.zeros((), dtype=torch.long))
        self.register_buffer("nonfinite_pending", torch.zeros((), dtype=torch.bool))
        self.register_buffer("last_condition", torch.full((), math.nan, dtype=torch.float64))
        # Plain Python state (saved as the module's extra state): counting steps needs no device sync.
        self.n_steps = 0
        self.last_reject_reason = ""
        # The last update's condition number when the ridge bound made computing it unnecessary: computed into
        # `last_condition` only when read (`stats`, `state_dict`), not on every training step.
        self._pending_condition: Callable[[], float] | None = None
        # (n_seen, K_dmd) of the last accepted estimate: `estimate()` on unchanged data returns it, not a new solve.
        self._last_estimate: tuple[int, Tensor] | None = None
        # Where the buffer's random subset comes from: torch's global CPU generator, or (koopman.own_rng) the
        # companions' own, set by the model; its state is saved by whoever owns it.
        self.generator: torch.Generator | None = None
        self.register_state_dict_pre_hook(StreamingDMD._settle_before_saving)

    # ---- counters --------------------------------------------------------------------------------

    @property
    def n_pairs(self) -> int:
        """Pairs the estimate rests on: those in the buffer (or, for `forgetting`, all pairs absorbed)."""
        return int(self.count)

    @property
    def n_accepted(self) -> int:
        return int(self.accepted)

    @property
    def n_rejected(self) -> int:
        return int(self.rejected)

    def stats(self) -> dict[str, float]:
        """Flat numbers for logging (e.g. as `dmd/<layer>/<name>`)."""
        attempts = self.n_accepted + self.n_rejected
        return {
            "n_pairs": float(self.n_pairs),
            "n_seen": float(self.n_seen),
            "n_accepted": float(self.n_accepted),
            "n_rejected": float(self.n_rejected),
            "accept_rate": self.n_accepted / attempts if attempts else math.nan,
            "condition": self.condition,
        }

    @property
    def condition(self) -> float:
        """Condition number of the system the last update solved (or refused), NaN before any."""
        self._settle_condition()
        return float(self.last_condition)

    def _settle_condition(self) -> None:
        if self._pending_condition is not None:
            self.last_condition.fill_(self._pending_condition())
            self._pending_condition = None

    @staticmethod
    def _settle_before_saving(module: StreamingDMD, prefix: str, keep_vars: bool) -> None:
        module._settle_condition()

    def get_extra_state(self) -> dict[str, Any]:
        return {"n_steps": self.n_steps, "last_reject_reason": self.last_reject_reason}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.n_steps = int(state.get("n_steps", 0))
        self.last_reject_reason = str(state.get("last_reject_reason", ""))
        self._pending_condition = None  # the loaded `last_condition` is the settled value
        self._last_estimate = None

    # ---- data ------------------------------------------------------------------------------------

    @torch.no_grad()
    def push(self, z: Tensor, z_next: Tensor) -> None:
        """Add lifted pairs `(z, z')` of shape `(..., k)`; they are detached and flattened to `(M, k)`.

        Buffer estimators write into a circular buffer (oldest pairs overwritten first); when
        `M > buffer_size` a uniformly random subset of `buffer_size` rows is kept, drawn from `self.generator`
        (torch's global CPU RNG unless the model set its own), whose state the trainer's checkpoint restores.
        `forgetting` folds all `M` pairs into its Grams; a push with non-finite values is left out of them (it
        would poison every later estimate) and makes the next update be rejected.
        """
        if z.shape != z_next.shape or z.shape[-1] != self.koopman_dim:
            raise ValueError(
                f"z and z_next must have the same shape (..., {self.koopman_dim}), "
                f"got {tuple(z.shape)} and {tuple(z_next.shape)}"
            )
        z = z.detach().reshape(-1, self.koopman_dim)
        z_next = z_next.detach().reshape(-1, self.koopman_dim)
        m = z.shape[0]
        if m == 0:
            return
        self.n_seen += m
        if self.estimator == "forgetting":
            self._absorb(z, z_next)
            return
        if m > self.config.buffer_size:
            keep = torch.randperm(m, generator=self.generator)[: self.config.buffer_size].to(z.device)
            z, z_next = z[keep], z_next[keep]
            m = self.config.buffer_size
        slots = (self.write_pos + torch.arange(m, device=self.write_pos.device)) % self.config.buffer_size
        self.z[slots] = z.to(self.z)
        self.z_next[slots] = z_next.to(self.z_next)
        self.write_pos.copy_((self.write_pos + m) % self.config.buffer_size)
        self.count.copy_(torch.clamp(self.count + m, max=self.config.buffer_size))

    def _absorb(self, z: Tensor, z_next: Tensor) -> None:
        z64, z_next64 = z.to(self.gram), z_next.to(self.gram)
        m, rho = z64.shape[0], self.config.forgetting
        gram = rho * self.gram + (1 - rho) / m * (z64.mT @ z64)
        cross = rho * self.cross + (1 - rho) / m * (z_next64.mT @ z64)
        # torch.where rather than an `if` on a tensor: no host-device sync on every training step.
        finite = torch.isfinite(gram).all() & torch.isfinite(cross).all()
        self.gram.copy_(torch.where(finite, gram, self.gram))
        self.cross.copy_(torch.where(finite, cross, self.cross))
        self.count += finite.long() * m
        self.nonfinite_pending |= ~finite

    # ---- estimate and update ---------------------------------------------------------------------

    def _solve(self, max_condition: float = math.inf) -> tuple[Tensor | None, float | Callable[[], float]] | None:
        """(K in float64 or None if too ill-conditioned to solve, condition number or a function computing it);
        None without data."""
        if self.n_pairs == 0:
            return None
        if self.estimator == "forgetting":
            return ridge_operator(self.gram, self.cross, self.config.ridge, max_condition, lazy_condition=True)
        z, z_next = self.z[: self.n_pairs].double(), self.z_next[: self.n_pairs].double()
        if self.estimator == "lstsq":
            return lstsq_operator(z, z_next, self.config.svd_rtol)
        return ridge_operator(z.mT @ z, z_next.mT @ z, self.config.ridge, max_condition, lazy_condition=True)

    @torch.no_grad()
    def estimate(self) -> Tensor | None:
        """`K_dmd` `(k, k)` in the buffer dtype, or None before any pair arrives. No guardrails here."""
        if self._last_estimate is not None and self._last_estimate[0] == int(self.n_seen):
            return self._last_estimate[1].to(self.z.dtype)
        solved = self._solve()
        return None if solved is None else solved[0].to(self.z.dtype)

    def _checked_estimate(self) -> tuple[Tensor | None, str]:
        """(K_dmd in float64, "") if it passes the guardrails, else (None, reason)."""
        if self.nonfinite_pending:
            self.nonfinite_pending.fill_(False)
            return None, "non-finite pairs were pushed since the last update"
        if self.estimator != "forgetting":
            n = self.n_pairs
            if not bool(torch.isfinite(self.z[:n]).all() & torch.isfinite(self.z_next[:n]).all()):
                return None, "non-finite pairs in the buffer"
        solved = self._solve(self.config.max_condition)
        if solved is None:
            return None, "no pairs yet"
        k_dmd, condition = solved
        if callable(condition):  # within max_condition by the ridge bound: computed only if someone reads it
            self._pending_condition = condition
        else:
            self._pending_condition = None
            self.last_condition.fill_(condition)
            if not condition <= self.config.max_condition:
                limit = self.config.max_condition
                return None, f"ill-conditioned: condition number {condition:.3g} > max_condition {limit:.3g}"
        if not bool(torch.isfinite(k_dmd).all()):
            return None, "non-finite estimate"
        self._last_estimate = (int(self.n_seen), k_dmd)
        return k_dmd, ""

    @torch.no_grad()
    def update(self, operator: Tensor) -> bool:
        """Blend the estimate into `operator` in place, `K ← (1 − α) K + α K_dmd`; True if accepted.

        A rejected update (no data, non-finite pairs or estimate, condition number above `max_condition`, or a
        `torch.linalg.LinAlgError`) leaves `operator` untouched, increments `n_rejected` and sets
        `last_reject_reason`. `last_reject_reason` is not cleared by a later accepted update.
        """
        if operator.shape != (self.koopman_dim, self.koopman_dim):
            raise ValueError(
                f"operator must have shape ({self.koopman_dim}, {self.koopman_dim}), "
                f"got {tuple(operator.shape)}"
            )
        try:
            k_dmd, reason = self._checked_estimate()
        except torch.linalg.LinAlgError as err:
            k_dmd, reason = None, f"LinAlgError: {err}"
        if k_dmd is None:
            self.rejected += 1
            self.last_reject_reason = reason
            return False
        operator.mul_(1 - self.config.alpha).add_(k_dmd.to(operator), alpha=self.config.alpha)
        self.accepted += 1
        return True

    def step(self, operator: Tensor) -> bool | None:
        """Call once per training step: runs `update` every `update_interval`-th step, else returns None."""
        self.n_steps += 1
        if self.n_steps % self.config.update_interval != 0:
            return None
        return self.update(operator)

    def extra_repr(self) -> str:
        return (
            f"koopman_dim={self.koopman_dim}, estimator={self.estimator!r}, buffer_size={self.config.buffer_size}, "
            f"alpha={self.config.alpha}, ridge={self.config.ridge}"
        )
