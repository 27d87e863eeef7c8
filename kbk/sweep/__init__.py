"""kbk's Optuna sweeper for Hydra, and the MLflow parent run of a plain Hydra multirun.

Hydra discovers the sweeper through `hydra_plugins/kbk_sweeper`; select it with an `hparams_search` preset
(`override /hydra/sweeper: kbk_optuna`). Why kbk has its own sweeper: `docs/sweeps.md`.

Modules (each imports Optuna/MLflow only inside its functions, so `--cfg job` stays fast):

- `config`: the sweeper's structured config (`hydra/sweeper=kbk_optuna`).
- `space`: Hydra's sweep grammar (`choice`, `range`, `interval`, `tag(log, ...)`) to Optuna distributions.
- `storage`: where the study lives; `factories`: samplers and pruners built from their `_target_` configs.
- `heartbeat`, `engine`: the ask/tell engine: total budget, dedup by params, grids, stale trials, failures.
- `parent`, `results`: the MLflow parent run of a sweep or multirun, and a sweep's summary (table, best, plots).
- `optuna_sweeper`: the Hydra `Sweeper` that launches trials through the configured launcher.
- `trial`: the job side: report intermediate values to the trial, raise `TrialPruned`.
- `multirun_parent`: a parent run for plain `-m a=1,2` multiruns (Hydra's basic sweeper).

Environment variables the sweeper sets for each trial (read by `kbk/run.py` and `kbk.sweep.trial`):
"""

#: MLflow run id of the sweep's parent run; the job's run is created as its child.
ENV_PARENT_RUN = "KBK_PARENT_RUN_ID"
#: The study name, tagged `kbk.sweep` on the job's run.
ENV_SWEEP = "KBK_SWEEP"
#: The Optuna trial number, tagged `optuna.trial_number`; the run is named `trial-<n>`.
ENV_TRIAL = "KBK_TRIAL_NUMBER"
#: Where the study lives (an RDB URL or an absolute journal-file path), so the job can rebuild its trial.
ENV_STORAGE = "KBK_OPTUNA_STORAGE"
#: The study name in that storage.
ENV_STUDY = "KBK_OPTUNA_STUDY"
#: The pruner's config, as JSON (`{"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 5}`): pruners
#: live in processes, not storages.
ENV_PRUNER = "KBK_OPTUNA_PRUNER"
