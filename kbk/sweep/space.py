"""The search space: Hydra's sweep grammar to Optuna distributions, and trial parameters back to overrides.

    koopman.dim: choice(128, 256, 512)      -> CategoricalDistribution((128, 256, 512))   (also `128,256,512`)
    schedule: choice(linear, step)          -> a config-group choice: the trial gets `schedule=linear`
    dmd.buffer_size: range(100, 1000, 300)  -> IntDistribution(100, 1000, step=300)        (stop is exclusive)
    dmd.alpha: interval(0.05, 0.5)          -> FloatDistribution(0.05, 0.5)
    trainer.lr: tag(log, interval(1e-4, 1e-2)) -> FloatDistribution(1e-4, 1e-2, log=True)
    model.n_layers: tag(int, interval(1, 4))   -> IntDistribution(1, 4)
    trainer.max_steps: 200                  -> a fixed override for every trial

A float `range` becomes the categorical list of its values (exact values, no rounding of a float step).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kbk.errors import ConfigError

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

_PLAIN_STRING = re.compile(r"[A-Za-z_/][A-Za-z0-9_\-./]*")
_RESERVED = {"true", "false", "null", "nan", "inf", "-inf", "+inf"}


def format_value(value: Any) -> str:
    """A value as Hydra's override grammar reads it back to the same value and type."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    text = str(value)
    if _PLAIN_STRING.fullmatch(text) and text.lower() not in _RESERVED:
        return text
    # Quoted: Hydra escapes only quotes (and backslashes right before them) inside a quoted string.
    return "'" + re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text) + "'"


def _canonical(value: Any) -> Any:
    return repr(value) if isinstance(value, float) else value


def params_key(params: Mapping[str, Any]) -> str:
    """What makes two trials the same configuration: a hash of the sorted parameter values."""
    text = json.dumps(sorted((k, _canonical(v)) for k, v in params.items()), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class SearchSpace:
    """Distributions in declaration order, the grid values of discrete ones, and the fixed overrides."""

    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    values: dict[str, list[Any] | None] = field(default_factory=dict)  # None: continuous
    prefixes: dict[str, str] = field(default_factory=dict)  # "+" / "++" for keys added to the config
    texts: dict[str, str] = field(default_factory=dict)  # the sweep as written, e.g. "choice(128,256)"
    fixed: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return list(self.distributions)

    def grid(self) -> list[dict[str, Any]]:
        """Every point of a discrete space, in a stable order (the first parameter varies slowest)."""
        import itertools

        continuous = [n for n, v in self.values.items() if v is None]
        if continuous:
            raise ConfigError(
                f"The grid sampler (hydra/sweeper/sampler=grid) needs a discrete search space, but "
                f"{', '.join(continuous)} is an interval. Fix: use choice(...) or range(...) for grid parameters, or "
                "another sampler (hydra/sweeper/sampler=tpe, random)."
            )
        if not self.values:
            raise ConfigError("hydra.sweeper.params is empty: a sweep needs at least one parameter to vary.")
        names = self.names
        return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(self.values[n] for n in names))]

    def corners(self) -> list[dict[str, Any]]:
        """Points that together use every distinct choice and both ends of every interval: the first point
        takes each parameter's first value, each further one changes a single parameter. Checking these finds
        any value that no trial could run, at a cost of one config per value rather than the product."""
        ends = {name: list(values) if values is not None else self._ends(name)
                for name, values in self.values.items()}
        base = {name: options[0] for name, options in ends.items()}
        points = [base]
        for name, options in ends.items():
            points += [{**base, name: value} for value in options[1:]]
        return points

    def _ends(self, name: str) -> list[Any]:
        dist = self.distributions[name]
        return [dist.low, dist.high]

    def overrides(self, params: Mapping[str, Any]) -> list[str]:
        """The trial's overrides: its parameters (space order, then extras) followed by the fixed ones."""
        ordered = [n for n in self.names if n in params] + [n for n in params if n not in self.distributions]
        return [f"{self.prefixes.get(n, '')}{n}={format_value(params[n])}" for n in ordered] + list(self.fixed)

    def describe(self) -> dict[str, str]:
        """The sweep as written, for messages."""
        return dict(self.texts)

    def signature(self) -> dict[str, str]:
        """The distributions exactly (spacing and spelling of the grammar aside), for comparing two sweeps."""
        return {name: repr(dist) for name, dist in self.distributions.items()}


def _distribution(name: str, sweep: Any, text: str) -> tuple[BaseDistribution, list[Any] | None]:
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    tags = set(getattr(sweep, "tags", set()) or set())
    log = "log" in tags
    if isinstance(sweep, ChoiceSweep):
        values = list(sweep.list)
        bad = [v for v in values if not isinstance(v, str | int | float | bool)]
        if bad or not values:
            raise ConfigError(
                f"hydra.sweeper.params.{name}={text}: choices must be numbers, strings or booleans, got {bad!r}. "
                "Fix: list plain values, e.g. choice(128, 256) or choice(linear, step)."
            )
        if len(set(map(_canonical, values))) != len(values):
            raise ConfigError(f"hydra.sweeper.params.{name}={text} lists a value twice. Fix: list each once.")
        return CategoricalDistribution(tuple(values)), values
    if isinstance(sweep, RangeSweep):
        start, stop, step = sweep.start, sweep.stop, sweep.step if sweep.step is not None else 1
        if step <= 0:
            raise ConfigError(f"hydra.sweeper.params.{name}={text}: the step must be > 0.")
        if all(isinstance(v, int) for v in (start, stop, step)):
            values = list(range(start, stop, step))
            if not values:
                raise ConfigError(f"hydra.sweeper.params.{name}={text} is empty (stop is exclusive).")
            return IntDistribution(values[0], values[-1], step=step, log=log and step == 1), values
        values = []
        k = 0
        while start + k * step < stop - 1e-12 * abs(step):  # exclusive stop, like Python's range
            values.append(round(start + k * step, 12))
            k += 1
        if not values:
            raise ConfigError(f"hydra.sweeper.params.{name}={text} is empty (stop is exclusive).")
        return CategoricalDistribution(tuple(values)), values
    if isinstance(sweep, IntervalSweep):
        low, high = sweep.start, sweep.end
        if not low < high:
            raise ConfigError(f"hydra.sweeper.params.{name}={text}: the low end must be below the high end.")
        if log and low <= 0:
            raise ConfigError(f"hydra.sweeper.params.{name}={text}: a log interval needs low > 0.")
        if "int" in tags:
            return IntDistribution(int(low), int(high), log=log), None
        return FloatDistribution(float(low), float(high), log=log), None
    raise ConfigError(f"hydra.sweeper.params.{name}={text}: unsupported sweep {type(sweep).__name__}.")


def parse_space(params: Mapping[str, Any] | None, arguments: Sequence[str] = ()) -> SearchSpace:
    """The space from `hydra.sweeper.params` plus the command line's overrides (which win for the same key):
    sweeps (`a=choice(1,2)`, `a=1,2`) become distributions, everything else fixed overrides."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    lines = [f"{k}={v}" for k, v in (params or {}).items()] + list(arguments)
    parser = OverridesParser.create()
    space = SearchSpace()
    fixed: dict[str, str] = {}
    for line in lines:
        try:
            override = parser.parse_override(line)
        except HydraException as e:
            text = " ".join(str(e).split())  # Hydra's message spans lines; kbk's errors are one
            raise ConfigError(f"Cannot parse the sweep override {line!r}: {text}") from None
        key = override.key_or_group
        prefix = line[: len(line) - len(line.lstrip("+~"))]
        # A later line for the same key replaces an earlier one (the command line beats the preset).
        space.distributions.pop(key, None)
        fixed.pop(key, None)
        if override.is_sweep_override():
            if prefix.startswith("~"):
                raise ConfigError(f"Cannot sweep a deletion: {line!r}.")
            text = line.split("=", 1)[1]
            space.distributions[key], space.values[key] = _distribution(key, override.value(), text)
            space.texts[key] = text
            if prefix:
                space.prefixes[key] = prefix
        else:
            fixed[key] = line
    space.values = {k: space.values[k] for k in space.distributions}
    space.texts = {k: space.texts[k] for k in space.distributions}
    space.fixed = list(fixed.values())
    return space
