"""A sweep's closing lines from a real Optuna study (`kbk.sweep.closing_lines`): the best trial with its params,
the Pareto front of a two-objective study, and what is said when nothing has completed (issue 12)."""

from __future__ import annotations

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from kbk.sweep.closing_lines import SHOWN_FRONT, best_lines

DIMS = CategoricalDistribution([8, 16, 32, 64, 128, 256, 512])


def study_with(values: list[list[float]], directions: list[str]) -> optuna.Study:
    study = optuna.create_study(directions=directions)
    for dim, value in zip(DIMS.choices, values, strict=False):
        study.add_trial(create_trial(params={"koopman.dim": dim}, distributions={"koopman.dim": DIMS},
                                     values=value))
    return study


def test_the_best_trial_is_named_with_its_value_and_params():
    study = study_with([[31.5], [27.25], [29.0]], ["minimize"])
    assert best_lines(study, ["val/ppl"]) == ["best val/ppl=27.25 (trial 1): koopman.dim=16"]


def test_a_two_objective_study_lists_its_pareto_front_at_most_a_few_trials():
    # (ppl, ms): trials 0, 1, 3 trade one for the other; trial 2 is worse than trial 1 in both.
    study = study_with([[30.0, 5.0], [25.0, 9.0], [26.0, 10.0], [20.0, 20.0]], ["minimize", "minimize"])
    lines = best_lines(study, ["val/ppl", "perf/step_ms"])
    assert lines == ["Pareto front: 3 trials:",
                     "  val/ppl=30, perf/step_ms=5 (trial 0): koopman.dim=8",
                     "  val/ppl=25, perf/step_ms=9 (trial 1): koopman.dim=16",
                     "  val/ppl=20, perf/step_ms=20 (trial 3): koopman.dim=64"]
    front = study_with([[float(i), float(-i)] for i in range(SHOWN_FRONT + 2)], ["minimize", "minimize"])
    many = best_lines(front, ["a", "b"])
    assert many[0] == f"Pareto front: {SHOWN_FRONT + 2} trials, the first {SHOWN_FRONT}:"
    assert len(many) == 1 + SHOWN_FRONT


def test_a_study_without_a_complete_trial_says_so():
    study = optuna.create_study()
    study.add_trial(create_trial(params={"koopman.dim": 8}, distributions={"koopman.dim": DIMS},
                                 state=TrialState.FAIL))
    assert best_lines(study, ["val/ppl"]) == ["no trial has completed yet: nothing is best"]
