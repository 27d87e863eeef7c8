"""What makes two runs, or two sweeper commands, the same experiment: their config without the keys that say where
things go, how the run is labelled, or how this one process continues it.

A run's config hash (`run_hash`) names its checkpoint folder, so a resumed or repeated run finds its own; a study
stores its sweep's settings (`experiment_settings` plus the search space) and refuses a later command whose
settings differ (`changed_settings`). Both leave out the same keys, `IGNORED_KEYS`.

Plain Python: OmegaConf is imported only when handed a DictConfig, so `--cfg job` pays nothing for this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Where things are written, tracked and logged (and Hydra's own settings): they may change between resumes.
LOCATION_KEYS = ("paths", "tracking", "hydra")
#: The user's labels for the MLflow run (`tags=[...]`, `notes=...`): they label a run without changing it.
LABEL_KEYS = ("tags", "notes")
#: How this process continues, records or inspects a run, not what it computes.
VOLATILE_KEYS = ("trainer.resume", "trainer.log_checkpoint", "trainer.save_best", "trainer.profile_steps",
                 "trainer.detect_anomaly", "trainer.keep_checkpoint")
#: Settings kbk gained after run hashes were first stored, with the default that computes what kbk computed
#: without them: left out at that default, so every earlier run keeps its hash (checkpoint folder, resume).
ADDED_KEYS = {"trainer.overfit_batches": 0, "trainer.early_stopping_patience": None, "trainer.precision": "fp32",
              "trainer.compile": False, "koopman.own_rng": False}
#: Every dotted key (and everything under it) that the same experiment may differ in.
IGNORED_KEYS = (*LOCATION_KEYS, *LABEL_KEYS, *VOLATILE_KEYS)


def experiment_config(cfg: Mapping[str, Any], *, resolve: bool = True) -> dict[str, Any]:
    """`cfg` as plain dicts and lists (enums as their names, `ridge`, as runs log them) without `IGNORED_KEYS`.
    `resolve=False` keeps interpolations as written (a sweep's settings: `${...}` as the user wrote them)."""
    plain = _plain(cfg, resolve)
    for dotted in IGNORED_KEYS:
        *parents, last = dotted.split(".")
        node: Any = plain
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    for dotted, default in ADDED_KEYS.items():
        *parents, last = dotted.split(".")
        node = plain
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and last in node and node[last] == default:
            del node[last]
    return plain


def run_hash(cfg: Mapping[str, Any]) -> str:
    """The run's config hash (16 hex digits): its checkpoint folder's name and its `kbk.config_hash` tag."""
    from kbk.tracking.run_params import config_hash

    return config_hash(experiment_config(cfg))


def experiment_settings(cfg: Mapping[str, Any]) -> dict[str, str]:
    """The experiment's settings flattened (`{"koopman.dim": "256", ...}`), interpolations unresolved: what a
    study stores to recognise a later command of the same sweep."""
    from kbk.tracking.run_params import flatten

    return flatten(experiment_config(cfg, resolve=False))


def changed_settings(stored: Mapping[str, str], now: Mapping[str, str],
                     defaults: Mapping[str, str] | None = None) -> list[str]:
    """The keys whose values differ between a study's stored settings and this command's, sorted.

    A key missing from `stored` whose value now is its default (`defaults`, the settings of the config
    without the user's overrides) is not a difference: the study was made before kbk had that key, and the
    default is what kbk computed then too (a new key must not break the resume of an older study)."""
    keys = sorted(k for k in set(stored) | set(now) if stored.get(k) != now.get(k))
    defaults = defaults or {}
    return [k for k in keys if not (k not in stored and k in defaults and defaults[k] == now.get(k))]


def _plain(cfg: Mapping[str, Any], resolve: bool) -> dict[str, Any]:
    if type(cfg).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(cfg, resolve=resolve, enum_to_str=True)
    import copy

    return copy.deepcopy(dict(cfg))
