"""The job side of pruning (`kbk.sweep.trial`) against a real journal storage, and the multirun callback's
no-op cases."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from kbk.sweep import ENV_PRUNER, ENV_STORAGE, ENV_STUDY, ENV_TRIAL
from kbk.sweep.factories import pruner_to_env
from kbk.sweep.trial import report_hook_from_env

optuna.logging.set_verbosity(optuna.logging.WARNING)
DIST = {"x": optuna.distributions.FloatDistribution(0, 1)}


@pytest.fixture
def study_with_history(tmp_path):
    """Two finished trials that reported 1.0 at steps 1..3, and a RUNNING trial for the job to rebuild."""
    path = str(tmp_path / "s.journal")
    study = optuna.create_study(storage=JournalStorage(JournalFileBackend(path)), study_name="s")
    for _ in range(2):
        trial = study.ask(DIST)
        for step in (1, 2, 3):
            trial.report(1.0, step)
        study.tell(trial, 1.0)
    running = study.ask(DIST)
    env = {ENV_STORAGE: path, ENV_STUDY: "s", ENV_TRIAL: str(running.number),
           ENV_PRUNER: pruner_to_env({"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0})}
    return study, running, env


def test_no_hook_outside_a_sweep():
    assert report_hook_from_env({}) is None
    assert report_hook_from_env({ENV_TRIAL: "3"}) is None  # a plain multirun: no storage


def test_the_hook_reports_and_prunes(study_with_history):
    study, running, env = study_with_history
    report = report_hook_from_env(env)
    report(math.nan, 1)  # non-finite: not reported (a diverged trial is a failure, not a prune)
    with pytest.raises(optuna.TrialPruned, match=r"MedianPruner at step 2"):
        report(7.0, 2)  # worse than the median of the earlier trials at step 2
    frozen = study.trials[running.number]
    assert frozen.intermediate_values == {2: 7.0}
    assert frozen.state == TrialState.RUNNING  # the sweeper, not the job, tells the final state
    better = study.ask(DIST)
    report = report_hook_from_env({**env, ENV_TRIAL: str(better.number)})
    for step in (1, 2, 3):
        report(0.5, step)  # better than the median: goes on
    assert study.trials[better.number].intermediate_values == {1: 0.5, 2: 0.5, 3: 0.5}


def test_no_pruner_only_reports(study_with_history):
    study, running, env = study_with_history
    report = report_hook_from_env({**env, ENV_PRUNER: pruner_to_env({"name": "none"})})
    report(1e6, 1)
    assert study.trials[running.number].intermediate_values == {1: 1e6}


def test_a_trial_closed_by_the_sweeper_stops_its_job(study_with_history):
    study, running, env = study_with_history
    report = report_hook_from_env(env)
    study.tell(running.number, state=TrialState.FAIL)  # a resumed sweep declared it stale
    with pytest.raises(optuna.TrialPruned, match="closed by the sweeper"):
        report(0.1, 1)


def test_multi_objective_studies_get_no_hook(tmp_path):
    path = str(tmp_path / "m.journal")
    study = optuna.create_study(storage=JournalStorage(JournalFileBackend(path)), study_name="m",
                                directions=["minimize", "minimize"])
    trial = study.ask(DIST)
    assert report_hook_from_env({ENV_STORAGE: path, ENV_STUDY: "m", ENV_TRIAL: str(trial.number)}) is None


def test_multirun_callback_is_a_no_op_without_tracking_for_single_runs_and_for_kbk_sweeps():
    from omegaconf import OmegaConf

    from kbk.sweep.multirun_parent import MultirunParent

    basic = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
    none = OmegaConf.create({"tracking": {"backend": "none"}, "paths": {"outputs": "/nonexistent"},
                             "hydra": {"sweeper": {"_target_": basic}, "sweep": {"dir": "/nonexistent/x"}}})
    callback = MultirunParent()
    callback.on_multirun_start(none)
    assert callback.parent_run_id is None
    kbk_sweep = OmegaConf.merge(none, {"tracking": {"backend": "mlflow"}, "hydra": {"sweeper": {
        "_target_": "hydra_plugins.kbk_sweeper.kbk_optuna_sweeper.KbkOptunaSweeper"}}})
    callback.on_multirun_start(kbk_sweep)
    assert callback.parent_run_id is None
    callback.on_job_start(none)  # a single run: nothing to set
    callback.on_multirun_end(none)
