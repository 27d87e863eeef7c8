"""The sweeper's structured config: `hydra/sweeper=kbk_optuna` (the keys of Hydra's Optuna sweeper, plus pruning,
failure tolerance and stale-trial settings).

    hydra:
      sweeper:
        sampler: {_target_: optuna.samplers.TPESampler, seed: 0}   # or hydra/sweeper/sampler=grid|random|nsgaii|...
        direction: minimize                   # or a list, one per optimized_metric name
        study_name: null                      # null: kbk-<hash of the sweep's settings>; auto: <preset>-<hash>
        storage: null                         # null: <outputs>/optuna/<study_name>.journal
        n_trials: 20                          # TOTAL finished (COMPLETE + PRUNED) trials; null: the whole grid
        n_jobs: 1                             # trials per launcher batch
        max_failure_rate: 0.25                # stop after more than this × n_trials failures in one invocation
        pruner: {_target_: optuna.pruners.NopPruner}  # or hydra/sweeper/pruner=median|hyperband|percentile|...
        params: {koopman.dim: choice(128, 256, 512)}
        custom_search_space: null             # "module.fn(cfg, trial)" suggesting more parameters
        dedup: true                           # a repeated parameter set reuses the earlier result
        heartbeat_interval: 30                # s between this process's heartbeats in the storage
        grace_period: 300                     # s without a heartbeat before another host's trials are stale
        plots: true                           # Optuna's plots on the MLflow parent run

The sampler and the pruner are configs of the groups `hydra/sweeper/sampler` and `hydra/sweeper/pruner`
(conf/hydra/sweeper/); an argument their config does not list is added with
`++hydra.sweeper.sampler.<arg>=<value>`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

#: Hydra instantiates plugins only from the `hydra_plugins` package (see hydra_plugins/kbk_sweeper).
SWEEPER_TARGET = "hydra_plugins.kbk_sweeper.kbk_optuna_sweeper.KbkOptunaSweeper"


@dataclass
class KbkOptunaSweeperConf:
    _target_: str = SWEEPER_TARGET
    # The sampler and pruner reach the sweeper as configs, built by it (`factories`): it moves the seed of each
    # parallel process and hands the pruner's config to every trial's process.
    _recursive_: bool = False
    # The sampler and the pruner: a config of the group hydra/sweeper/sampler (pruner), chosen here.
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "none"}])
    # `_target_: optuna.samplers.<Class>` and the class's arguments (null: the class's default); the grid's
    # (optuna.samplers.GridSampler) is kbk's own grid over `params`.
    sampler: Any = MISSING
    # "minimize" | "maximize", or a list of them (multi-objective), one per `optimized_metric` name.
    direction: Any = "minimize"
    # The study in the storage; re-running the same command resumes it. null: derived from the settings.
    study_name: str | None = None
    # null: a journal file under the outputs folder (safe for several processes on one machine or NFS);
    # a path (`*.journal`/`*.log`); or an Optuna RDB URL (postgresql://..., sqlite:////abs/path.db).
    storage: str | None = None
    # The budget in TOTAL: COMPLETE + PRUNED trials already in the storage count. null with the grid sampler:
    # every grid point.
    n_trials: int | None = 20
    # Trials launched per batch through the configured Hydra launcher (a batch waits for its slowest trial;
    # for asynchronous parallelism run several sweeper processes on one study).
    n_jobs: int = 1
    # The sweep stops when more than max_failure_rate × n_trials trials fail (crash, non-finite objective)
    # during one invocation. 0: stop at the first failure; 1: never stop.
    max_failure_rate: float = 0.25
    # `_target_: optuna.pruners.<Class>` and its arguments. Pruning needs trials that report (kbk.run does, at
    # every evaluation).
    pruner: Any = MISSING
    # The search space in Hydra's override grammar: choice(...), a,b,c, range(start, stop[, step]),
    # interval(low, high), tag(log, interval(...)), tag(int, interval(...)); plain values are fixed overrides.
    params: dict[str, Any] | None = None
    # "module.function(cfg, trial)" suggesting extra parameters define-by-run (not with the grid sampler).
    custom_search_space: str | None = None
    # Identical parameter sets are not trained twice: a proposal equal to a finished trial reuses its result.
    dedup: bool = True
    # Seconds between this process's heartbeats in the storage. A RUNNING trial whose sweeper process is gone
    # (same host: its pid is dead; any host: no heartbeat for `grace_period` seconds) is failed and re-queued.
    heartbeat_interval: float = 30.0
    grace_period: float = 300.0
    # Optuna's plots (HTML) as artifacts of the sweep's parent run.
    plots: bool = True


def register() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group="hydra/sweeper", name="kbk_optuna", node=KbkOptunaSweeperConf,
                                 provider="kbk")
