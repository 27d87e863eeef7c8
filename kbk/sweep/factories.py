"""Samplers and pruners from their configs, built with Hydra's `instantiate`: `{_target_: optuna.samplers.TPESampler,
seed: 0}`. The config groups `hydra/sweeper/sampler` and `hydra/sweeper/pruner` (conf/hydra/sweeper/) hold one
config per class, shaped like those of Hydra's Optuna plugin, so its sampler configs work here as they are.

A key left null takes the class's default. `name: <config>` (the form of presets written before `_target_`,
`sampler: {name: grid}`) takes the `_target_` of the group's config of that name.

The pruner is rebuilt in every trial's process from the same mapping (JSON in `KBK_OPTUNA_PRUNER`): Optuna keeps
pruners in processes, not in the storage.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kbk.errors import ConfigError

if TYPE_CHECKING:
    from optuna.pruners import BasePruner
    from optuna.samplers import BaseSampler

#: kbk runs grids itself (see engine.py): every point enqueued, claimed through the storage.
GRID_CLASS = "GridSampler"


def config_of(value: Any, group: str) -> dict[str, Any]:
    """A sampler's or pruner's config as a plain dict with its `_target_`, without null keys."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(value, DictConfig):
        value = OmegaConf.to_container(value, resolve=True)
    if not isinstance(value, Mapping):
        raise ConfigError(f"hydra.sweeper.{group}={value!r} is not a config. Fix: pick one with "
                          f"hydra/sweeper/{group}=<{'|'.join(group_configs(group))}>, or give "
                          f"hydra.sweeper.{group}._target_=optuna.{group}s.<Class>.")
    spec = {k: v for k, v in value.items() if v is not None}
    name = spec.pop("name", None)
    if name is not None:
        spec["_target_"] = _target_of(group, str(name))
    if not spec.get("_target_"):
        raise ConfigError(f"hydra.sweeper.{group} has no _target_. Fix: pick a config with "
                          f"hydra/sweeper/{group}=<{'|'.join(group_configs(group))}>.")
    return spec


def group_configs(group: str) -> list[str]:
    from kbk.paths import CONF_DIR

    return sorted(p.stem for p in (CONF_DIR / "hydra" / "sweeper" / group).glob("*.yaml"))


def _target_of(group: str, name: str) -> str:
    from omegaconf import OmegaConf

    from kbk.paths import CONF_DIR

    if name.lower() not in group_configs(group):
        raise ConfigError(f"hydra.sweeper.{group}.name={name!r} is not a {group} kbk knows: use one of "
                          f"{', '.join(group_configs(group))} (hydra/sweeper/{group}=<name>), or "
                          f"`_target_: optuna.{group}s.<Class>`.")
    return str(OmegaConf.load(CONF_DIR / "hydra" / "sweeper" / group / f"{name.lower()}.yaml")["_target_"])


def class_name(spec: Mapping[str, Any]) -> str:
    return str(spec["_target_"]).rsplit(".", 1)[-1]


def is_grid(spec: Mapping[str, Any]) -> bool:
    return class_name(spec) == GRID_CLASS


def make_sampler(spec: Mapping[str, Any], seed_offset: int = 0) -> BaseSampler:
    """The Optuna sampler, its seed moved by `seed_offset` (parallel processes must not propose in lockstep). For
    the grid a seeded random sampler stands in: every grid point is enqueued, so it only names the study's sampler
    (Optuna's `GridSampler` would call `study.stop()` outside `optimize`)."""
    import optuna

    spec = {k: v for k, v in spec.items() if k != "_partial_"}  # the plugin's grid config is partial
    if "seed" in spec and seed_offset:
        spec["seed"] = int(spec["seed"]) + seed_offset
    if is_grid(spec):  # arguments meant for another sampler do not apply
        return optuna.samplers.RandomSampler(seed=spec.get("seed"))
    return _build(spec, "sampler", optuna.samplers.BaseSampler)


def make_pruner(spec: Mapping[str, Any]) -> BasePruner:
    import optuna

    if class_name(spec) == "NopPruner":  # pruning switched off: arguments meant for a preset's pruner do not apply
        return optuna.pruners.NopPruner()
    return _build(spec, "pruner", optuna.pruners.BasePruner)


def _build(spec: Mapping[str, Any], group: str, kind: type) -> Any:
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    args = {k: v for k, v in spec.items() if k != "_target_"}
    try:
        built = instantiate(dict(spec), _convert_="all")
    except InstantiationException as e:
        cause = " ".join(str(e.__cause__ or e).split())
        raise ConfigError(f"hydra.sweeper.{group}: cannot build {spec['_target_']}({args}): {cause}. Fix: correct "
                          f"or drop the argument (or set it to null for the class's default).") from None
    if not isinstance(built, kind):
        raise ConfigError(f"hydra.sweeper.{group}._target_={spec['_target_']} is not an Optuna {group}. Fix: use "
                          f"optuna.{group}s.<Class>.")
    return built


def pruner_to_env(spec: Mapping[str, Any]) -> str:
    return json.dumps(dict(spec), sort_keys=True, separators=(",", ":"))


def pruner_from_env(text: str | None) -> BasePruner:
    if not text:
        import optuna

        return optuna.pruners.NopPruner()
    return make_pruner(config_of(json.loads(text), "pruner"))


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
