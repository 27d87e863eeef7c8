"""The job side of pruning: report intermediate values to this job's Optuna trial, from whatever process runs it.

kbk's sweeper passes the storage, study, trial number and pruner of each trial in the environment
(`KBK_OPTUNA_STORAGE`, `KBK_OPTUNA_STUDY`, `KBK_TRIAL_NUMBER`, `KBK_OPTUNA_PRUNER`); the job rebuilds its
`optuna.trial.Trial` from them. `kbk.build.callbacks` hands the hook to the trainer as a `ReportMetric` callback:

    HybridTrainer(..., callbacks=[..., ReportMetric(report_hook_from_env(), optimized_metric)])

At each evaluation it records the value and raises `optuna.TrialPruned` when the pruner says so (the MLflow run then
ends KILLED, labelled pruned, with the reason, and the sweeper records the trial PRUNED).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping

from kbk.sweep import ENV_PRUNER, ENV_STORAGE, ENV_STUDY, ENV_TRIAL

ReportHook = Callable[[float, int], None]


def report_hook_from_env(environ: Mapping[str, str] | None = None) -> ReportHook | None:
    """A `report(value, step)` hook for this job's trial, or None when the job is not a trial of kbk's sweeper
    (or the study has several objectives, which Optuna does not prune)."""
    env = os.environ if environ is None else environ
    storage_spec, study_name, number = env.get(ENV_STORAGE), env.get(ENV_STUDY), env.get(ENV_TRIAL)
    if not (storage_spec and study_name and number):
        return None
    import optuna

    from kbk.sweep.factories import pruner_from_env
    from kbk.sweep.storage import open_storage

    storage = open_storage(storage_spec)
    study = optuna.load_study(study_name=study_name, storage=storage,
                              sampler=optuna.samplers.RandomSampler(), pruner=pruner_from_env(env.get(ENV_PRUNER)))
    if len(study.directions) > 1:
        return None
    trial_number = int(number)
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study_name),
                                                               trial_number)
    trial = optuna.trial.Trial(study, trial_id)
    pruner_name = type(study.pruner).__name__

    def report(value: float, step: int) -> None:
        value = float(value)
        if not math.isfinite(value):
            # Not reported: pruners would prune it, but a diverged trial is a failure. The trainer stops on a
            # non-finite loss (max_nan_steps); otherwise the final objective is non-finite and the sweeper
            # records FAIL with that reason.
            return
        try:
            trial.report(value, int(step))
        except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError, ValueError) as e:
            if "finished" not in str(e).lower():
                raise
            # The sweeper already closed this trial (its process died and a resumed sweep re-queued it).
            raise optuna.TrialPruned(f"trial {trial_number} was closed by the sweeper while running") from None
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned by {pruner_name} at step {step} (objective {value:.6g})")

    return report


def record_result_from_env(value: float | list[float], environ: Mapping[str, str] | None = None) -> None:
    """Store the finished job's objective on its trial (user attribute `kbk.result`), from the job's process. If
    the sweeper dies before its `tell`, the next sweeper process tells COMPLETE from this record rather than
    training the point again (`SweepEngine.recover_stale`). A no-op outside kbk's sweeper."""
    env = os.environ if environ is None else environ
    storage_spec, study_name, number = env.get(ENV_STORAGE), env.get(ENV_STUDY), env.get(ENV_TRIAL)
    if not (storage_spec and study_name and number):
        return
    import optuna

    from kbk.sweep.engine import RESULT_ATTR
    from kbk.sweep.storage import open_storage

    storage = open_storage(storage_spec)
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study_name),
                                                               int(number))
    values = [float(v) for v in (value if isinstance(value, list | tuple) else [value])]
    try:
        storage.set_trial_user_attr(trial_id, RESULT_ATTR, values)
    except optuna.exceptions.UpdateFinishedTrialError:
        pass  # already told (or closed as stale by another process): nothing to recover
