"""Koopman loss-weight schedules: how much the auxiliary Koopman loss counts at each point of training.

A schedule maps `progress` (epochs or optimiser steps, see `unit`) to a weight:

    progress < warmup            0                      phase "gradient_warmup" (Koopman learning off)
    warmup <= progress < total   ramp from min to max   phase "hybrid"
    progress >= total            max_weight             phase "koopman_dominant"

With `r = (progress - warmup) / (total - warmup)` in [0, 1) the ramps are

    linear       min + (max - min) * r
    exponential  f * (max / f) ** r  with  f = max(min_weight, max_weight * EXP_FLOOR_RATIO)  (geometric)
    step         min + (max - min) * k / 3,  k = how many of 1/4, 1/2, 3/4 r has reached (inclusive)
    constant     max

Reproducing the seed. Its trainer counted epochs from 0 and asked the schedule once per epoch with the
integer epoch; its Colab run (5 epochs, Koopman from epoch 3, max 0.1, linear) logged the weights
0, 0, 0, 0, 0.05. The linear formula with `warmup=3, total=5` on integer epochs gives exactly that: epochs 0-2
are before warm-up (0), epoch 3 has r = 0 (min = 0), epoch 4 has r = 1/2 (0.05). So `total` is the number of
training epochs, the ramp ends where training ends, and the integer-epoch seed never logs max_weight. (The
seed's test line "0.0 -> 0.1875 -> 0.5" is what the same formula gives at epochs 2, 5, 10 with warmup=2,
total=10, max=0.5; that setting is a guess.)

Integer or continuous progress. `progress` may be fractional. Passing the integer epoch (`epoch_progress(e)`)
holds the weight fixed for a whole epoch and reproduces the seed's table; passing `epoch + batch / batches`
(`epoch_progress(e, batch, batches)`) ramps smoothly within epochs and reaches max_weight at the end of
training: in the Colab setting the mean weight over (0-based) epochs 3 and 4 is then 0.025 and 0.075 instead
of 0 and 0.05. Short runs count optimiser steps instead (`unit="step"`, `warmup`/`total` in steps); the
formula is the same, and the unit records what `progress` means so that a saved schedule is not resumed
against the wrong counter.

A Koopman-dominant phase inside training needs `total` below the training length; the weight then stays at
max.

Exponential with min_weight = 0. A geometric ramp cannot start at 0 (0 times anything is 0); the seed silently
used the linear ramp in that case. Here the ramp starts at the floor `f = max(min_weight, max_weight * 1e-3)`:
from min 0 it starts at max/1000 and grows 1000-fold over the ramp. It is monotone and convex in r, and lies
below the linear ramp from min to max except for r < ~0.002, where it sits at the tiny floor while linear
starts from 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from kbk.errors import ConfigError

SCHEDULE_TYPES = ("linear", "exponential", "step", "constant")
UNITS = ("epoch", "step")
PHASES = ("gradient_warmup", "hybrid", "koopman_dominant")
# Where the exponential ramp starts when min_weight is 0 (or smaller than this fraction of max_weight).
EXP_FLOOR_RATIO = 1e-3


class ScheduleConfigError(ConfigError, ValueError):
    """A schedule argument is out of range: a ValueError for callers, a ConfigError so the entrypoint prints
    the message alone."""


def epoch_progress(epoch: int, batch: int | None = None, batches_per_epoch: int | None = None) -> float:
    """Progress in epochs: the integer `epoch` (the seed's per-epoch weight) or
    `epoch + batch / batches_per_epoch` (continuous within the epoch).

    `epoch` and `batch` are 0-based, so the first batch of epoch 3 is progress 3.0 either way.
    """
    if batch is None and batches_per_epoch is None:
        return float(epoch)
    if batch is None or batches_per_epoch is None or not 0 <= batch < batches_per_epoch:
        raise ValueError(
            f"epoch_progress needs both batch and batches_per_epoch with 0 <= batch < batches_per_epoch, "
            f"got batch={batch}, batches_per_epoch={batches_per_epoch}"
        )
    return epoch + batch / batches_per_epoch


def _finite(name: str, value: Any) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ScheduleConfigError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise ScheduleConfigError(f"{name} must be finite, got {value!r}")
    return x


class KoopmanWeightSchedule:
    """The Koopman loss weight as a function of training progress (formulas in the module docstring).

    Stateless apart from its configuration, so `state_dict` is the config and a resumed run recomputes the
    weight from its progress counter.
    """

    def __init__(
        self,
        type: str = "linear",
        min_weight: float = 0.0,
        max_weight: float = 0.1,
        warmup: float = 3,
        total: float = 5,
        unit: str = "epoch",
    ) -> None:
        if type not in SCHEDULE_TYPES:
            raise ScheduleConfigError(f"type must be one of {', '.join(SCHEDULE_TYPES)}, got {type!r}")
        if unit not in UNITS:
            raise ScheduleConfigError(f"unit must be one of {', '.join(UNITS)}, got {unit!r}")
        min_weight = _finite("min_weight", min_weight)
        max_weight = _finite("max_weight", max_weight)
        warmup = _finite("warmup", warmup)
        total = _finite("total", total)
        if min_weight < 0:
            raise ScheduleConfigError(f"min_weight must be >= 0, got {min_weight}")
        if max_weight < 0:
            raise ScheduleConfigError(f"max_weight must be >= 0, got {max_weight}")
        if min_weight > max_weight:
            raise ScheduleConfigError(
                f"min_weight must be <= max_weight, got min_weight={min_weight} > max_weight={max_weight}"
            )
        if total <= 0:
            raise ScheduleConfigError(f"total must be > 0 {unit}s, got {total}")
        if warmup < 0:
            raise ScheduleConfigError(f"warmup must be >= 0 {unit}s, got {warmup}")
        if warmup > total:
            raise ScheduleConfigError(
                f"warmup must be <= total, got warmup={warmup} > total={total} ({unit}s); "
                f"lower warmup or raise total"
            )
        self.type = type
        self.min_weight = min_weight
        self.max_weight = max_weight
        self.warmup = warmup
        self.total = total
        self.unit = unit

    # -- the schedule --------------------------------------------------------------------------------------

    def active(self, progress: float) -> bool:
        """Whether Koopman learning is on: from `warmup` (inclusive) onwards."""
        return _finite("progress", progress) >= self.warmup

    def phase(self, progress: float) -> str:
        """`gradient_warmup` before warmup, `hybrid` while ramping in [warmup, total), `koopman_dominant`
        from total on."""
        p = _finite("progress", progress)
        if p < self.warmup:
            return "gradient_warmup"
        if p < self.total:
            return "hybrid"
        return "koopman_dominant"

    def weight(self, progress: float) -> float:
        """The Koopman loss weight at `progress` (same unit as warmup/total; fractional allowed)."""
        p = _finite("progress", progress)
        if p < self.warmup:
            return 0.0
        # Checked before computing r so that warmup == total (span 0) never divides by zero.
        if p >= self.total or self.type == "constant":
            return self.max_weight
        lo, hi = self.min_weight, self.max_weight
        span = self.total - self.warmup
        done = p - self.warmup
        if self.type == "linear":
            return lo + (hi - lo) * (done / span)
        if self.type == "exponential":
            floor = max(lo, hi * EXP_FLOOR_RATIO)
            if floor == 0.0:  # max_weight == 0: nothing to ramp to
                return 0.0
            return floor * (hi / floor) ** (done / span)
        # step: compare 4*done with k*span rather than done/span with k/4, so that boundaries that are exact
        # in the user's units (3.5 with warmup 3, total 5) land exactly: multiplying by 4 is exact in floats.
        k = sum(4.0 * done >= q * span for q in (1, 2, 3))
        return lo + (hi - lo) * k / 3.0

    __call__ = weight

    # -- config round trip ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "min_weight": self.min_weight,
            "max_weight": self.max_weight,
            "warmup": self.warmup,
            "total": self.total,
            "unit": self.unit,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the configuration by `state`, validated as the constructor does (missing keys take the
        constructor's defaults); on error the schedule is left unchanged."""
        self.__dict__.update(type(self).from_dict(state).__dict__)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> KoopmanWeightSchedule:
        allowed = ("type", "min_weight", "max_weight", "warmup", "total", "unit")
        unknown = sorted(set(d) - set(allowed))
        if unknown:
            raise ScheduleConfigError(
                f"unknown schedule keys {unknown}; allowed keys are {', '.join(allowed)}"
            )
        return cls(**dict(d))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KoopmanWeightSchedule) and self.state_dict() == other.state_dict()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.state_dict().items())
        return f"KoopmanWeightSchedule({args})"
