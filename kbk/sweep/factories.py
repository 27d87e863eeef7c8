"""Samplers and pruners from config mappings: `{name: tpe, seed: 0, ...}` or `{_target_: optuna.samplers.X, ...}`.

The pruner is rebuilt in every trial's process from the same mapping (passed as JSON in `KBK_OPTUNA_PRUNER`):
Optuna keeps pruners in processes, not in the storage.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kbk.errors import ConfigError

if TYPE_CHECKING:
    from optuna.pruners import BasePruner
    from optuna.samplers import BaseSampler

SAMPLERS = {
    "tpe": "TPESampler",
    "random": "RandomSampler",
    "cmaes": "CmaEsSampler",
    "nsgaii": "NSGAIISampler",
    "nsgaiii": "NSGAIIISampler",
    "qmc": "QMCSampler",
    "gp": "GPSampler",
    "bruteforce": "BruteForceSampler",
}
PRUNERS = {
    "median": "MedianPruner",
    "percentile": "PercentilePruner",
    "hyperband": "HyperbandPruner",
    "successive_halving": "SuccessiveHalvingPruner",
    "threshold": "ThresholdPruner",
    "none": "NopPruner",
}
GRID = "grid"  # kbk runs grids itself (see engine.py): every point enqueued, claimed through the storage


def as_mapping(value: Any, what: str) -> dict[str, Any]:
    """A config node as a plain dict: `tpe` -> {"name": "tpe"}, None -> {"name": "none"}."""
    if value is None:
        return {"name": "none"}
    if isinstance(value, str):
        return {"name": value}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(value, DictConfig):
            value = OmegaConf.to_container(value, resolve=True)
    except ImportError:
        pass
    if not isinstance(value, Mapping):
        raise ConfigError(f"hydra.sweeper.{what}={value!r}: expected a name or a mapping with `name`.")
    return dict(value)


def sampler_name(spec: Mapping[str, Any]) -> str:
    if spec.get("_target_"):
        return str(spec["_target_"]).rsplit(".", 1)[-1]
    return str(spec.get("name") or "tpe").lower()


def is_grid(spec: Mapping[str, Any]) -> bool:
    return not spec.get("_target_") and sampler_name(spec) == GRID


def make_sampler(spec: Mapping[str, Any], seed_offset: int = 0) -> BaseSampler:
    """The Optuna sampler. For the grid, a seeded random sampler stands in: every grid point is enqueued, so it
    only names the study's sampler (Optuna's `GridSampler` would call `study.stop()` outside `optimize`)."""
    import optuna

    kwargs = {k: v for k, v in spec.items() if k not in ("name", "_target_") and v is not None}
    if kwargs.get("seed") is not None and seed_offset:
        kwargs["seed"] = int(kwargs["seed"]) + seed_offset
    name = sampler_name(spec)
    if spec.get("_target_"):
        from hydra.utils import get_class

        cls = get_class(str(spec["_target_"]))
    elif name == GRID:  # arguments meant for another sampler (a preset's, say) do not apply
        return optuna.samplers.RandomSampler(seed=kwargs.get("seed"))
    elif name in SAMPLERS:
        cls = getattr(optuna.samplers, SAMPLERS[name])
    else:
        raise ConfigError(
            f"hydra.sweeper.sampler.name={name!r} is not a sampler kbk knows: use one of "
            f"{', '.join([GRID, *SAMPLERS])}, or `_target_: optuna.samplers.<Class>`."
        )
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"hydra.sweeper.sampler: {cls.__name__}({kwargs}) is invalid: {e}. Fix: set the "
                          "argument to null (hydra.sweeper.sampler.<arg>=null) or drop it.") from None


def pruner_spec(value: Any) -> dict[str, Any]:
    spec = as_mapping(value, "pruner")
    if not spec.get("_target_"):
        name = str(spec.get("name") or "none").lower()
        if name not in PRUNERS:
            raise ConfigError(
                f"hydra.sweeper.pruner.name={name!r} is not a pruner kbk knows: use one of {', '.join(PRUNERS)}, "
                "or `_target_: optuna.pruners.<Class>`."
            )
        spec["name"] = name
    return spec


def make_pruner(spec: Mapping[str, Any]) -> BasePruner:
    import optuna

    kwargs = {k: v for k, v in spec.items() if k not in ("name", "_target_") and v is not None}
    if spec.get("_target_"):
        from hydra.utils import get_class

        cls = get_class(str(spec["_target_"]))
    else:
        name = str(spec.get("name") or "none").lower()
        if name == "none":
            return optuna.pruners.NopPruner()  # arguments left from a preset's pruner do not apply
        cls = getattr(optuna.pruners, PRUNERS[name])
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"hydra.sweeper.pruner: {cls.__name__}({kwargs}) is invalid: {e}. Fix: set the argument "
                          "to null (hydra.sweeper.pruner.<arg>=null) or drop it.") from None


def pruner_to_env(spec: Mapping[str, Any]) -> str:
    return json.dumps({k: v for k, v in spec.items() if v is not None}, sort_keys=True, separators=(",", ":"))


def pruner_from_env(text: str | None) -> BasePruner:
    return make_pruner(json.loads(text) if text else {"name": "none"})


def directions_of(direction: Any, metrics: list[str]) -> list[str]:
    """One direction per objective; a single direction serves every metric."""
    try:
        from omegaconf import ListConfig, OmegaConf

        if isinstance(direction, ListConfig):
            direction = OmegaConf.to_container(direction)
    except ImportError:
        pass
    dirs = [direction] if isinstance(direction, str) else list(direction or ["minimize"])
    dirs = [str(d).lower() for d in dirs]
    bad = [d for d in dirs if d not in ("minimize", "maximize")]
    if bad:
        raise ConfigError(f"hydra.sweeper.direction={direction!r}: each must be minimize or maximize.")
    if len(dirs) == 1 and len(metrics) > 1:
        dirs = dirs * len(metrics)
    if len(dirs) != len(metrics):
        raise ConfigError(
            f"hydra.sweeper.direction has {len(dirs)} entries but optimized_metric names {len(metrics)} "
            f"metrics ({', '.join(metrics)}). Fix: give one direction per metric."
        )
    return dirs
