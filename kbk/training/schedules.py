"""Koopman loss-weight schedules: how much the auxiliary Koopman loss counts at each point of training.

`ScheduleConfig` is what a user sets (`unit` "fraction" of the run, "epoch" or "step"; `total` null for the end of
training); `ScheduleConfig.resolve(total_steps, epochs)` turns it into the `KoopmanWeightSchedule` of one run,
counted in epochs or optimiser steps. A schedule maps `progress` (epochs or optimiser steps, see `unit`) to a
weight:

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

Integer or continuous progress. `progress` may be fractional. Passing the integer epoch (what the trainer does
with `unit="epoch"`) holds the weight fixed for a whole epoch and reproduces the seed's table; passing
`epoch + batch / batches` ramps smoothly within epochs and reaches max_weight at the end of training: in the
Colab setting the mean weight over (0-based) epochs 3 and 4 is then 0.025 and 0.075 instead of 0 and 0.05.
Short runs count optimiser steps instead (`unit="step"`, `warmup`/`total` in steps); the formula is the same,
and the unit records what `progress` means so that a saved schedule is not resumed against the wrong counter.

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
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any

from kbk.errors import SettingError, require, require_choice


class ScheduleType(str, Enum):
    linear = "linear"
    exponential = "exponential"
    step = "step"
    constant = "constant"


#: What `warmup`/`total` count: fractions of the run's optimiser steps (any run length), whole 0-based epochs
#: (the weight fixed within an epoch, as the seed had it) or optimiser steps.
UNITS = ("fraction", "epoch", "step")
# Where the exponential ramp starts when min_weight is 0 (or smaller than this fraction of max_weight).
EXP_FLOOR_RATIO = 1e-3


def _finite(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v)


@dataclass
class ScheduleConfig:
    type: ScheduleType = ScheduleType.linear
    min_weight: float = 0.0
    max_weight: float = 0.1
    warmup: float = 0.3
    total: float | None = None  # null: the end of training
    unit: str = "fraction"  # "fraction" | "epoch" | "step" (see UNITS)

    def __post_init__(self) -> None:
        require_choice(self, "type", ScheduleType)
        require_choice(self, "unit", UNITS)
        for name in ("min_weight", "max_weight", "warmup"):
            require(self, name, lambda v: _finite(v) and v >= 0, "a finite number >= 0")
        require(self, "total", lambda v: v is None or (_finite(v) and v > 0),
                "a finite number > 0, or null for the end of training")
        if self.min_weight > self.max_weight:
            raise SettingError(type(self), "min_weight", self.min_weight, f"<= max_weight={self.max_weight}")
        if self.total is not None and self.warmup > self.total:
            raise SettingError(type(self), "warmup", self.warmup,
                               f"<= total={self.total} ({self.unit}s): lower warmup or raise total")

    def resolve(self, total_steps: int, epochs: int) -> KoopmanWeightSchedule:
        """The schedule of a run of `total_steps` optimiser steps in `epochs` epochs: `unit: fraction` becomes
        optimiser steps of this run, `total: null` its end."""
        if self.unit == "fraction":
            total = self.total if self.total is not None else 1.0
            return KoopmanWeightSchedule(self.type, self.min_weight, self.max_weight,
                                         warmup=math.floor(self.warmup * total_steps),
                                         total=max(1, math.floor(total * total_steps)), unit="step")
        end = epochs if self.unit == "epoch" else total_steps
        return KoopmanWeightSchedule(self.type, self.min_weight, self.max_weight, warmup=self.warmup,
                                     total=self.total if self.total is not None else end, unit=self.unit)


@dataclass
class KoopmanWeightSchedule(ScheduleConfig):
    """The Koopman loss weight as a function of training progress (formulas in the module docstring): a
    `ScheduleConfig` resolved for one run, counted in epochs or optimiser steps (`ScheduleConfig.resolve`).

    Stateless apart from its configuration, so `state_dict` is the config and a resumed run recomputes the
    weight from its progress counter.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self, "unit", lambda v: v != "fraction",
                "epoch or step (resolve a fraction against the run first: ScheduleConfig.resolve)")
        require(self, "total", lambda v: v is not None, "a number of epochs or steps (resolve null first: "
                "ScheduleConfig.resolve)")
        for name in ("min_weight", "max_weight", "warmup", "total"):
            setattr(self, name, float(getattr(self, name)))

    # -- the schedule --------------------------------------------------------------------------------------

    def active(self, progress: float) -> bool:
        """Whether Koopman learning is on: from `warmup` (inclusive) onwards."""
        return _progress(progress) >= self.warmup

    def phase(self, progress: float) -> str:
        """`gradient_warmup` before warmup, `hybrid` while ramping in [warmup, total), `koopman_dominant`
        from total on."""
        p = _progress(progress)
        if p < self.warmup:
            return "gradient_warmup"
        if p < self.total:
            return "hybrid"
        return "koopman_dominant"

    def weight(self, progress: float) -> float:
        """The Koopman loss weight at `progress` (same unit as warmup/total; fractional allowed)."""
        p = _progress(progress)
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
        """The settings as plain values (the type's name, not the Enum): what a checkpoint stores."""
        return {f.name: getattr(self, f.name) for f in fields(self)} | {"type": self.type.value}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the configuration by `state`, validated as the constructor does (missing keys take the
        constructor's defaults); on error the schedule is left unchanged."""
        self.__dict__.update(type(self).from_dict(state).__dict__)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> KoopmanWeightSchedule:
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(allowed))
        if unknown:
            raise ValueError(
                f"unknown schedule keys {unknown}; allowed keys are {', '.join(allowed)}"
            )
        return cls(**dict(d))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.state_dict().items())
        return f"KoopmanWeightSchedule({args})"


def _progress(value: Any) -> float:
    if not _finite(value):
        raise ValueError(f"progress must be a finite number, got {value!r}")
    return float(value)
