"""What a sweep prints when it ends: where its results went and what to run next.

After kbk's Optuna sweeper: the best trial (the Pareto front for several objectives), the study, the MLflow parent
run and ready `kbk.compare` / `kbk.report` commands. After a plain `-m` multirun (`MultirunParent`): its parent
run and the `kbk.compare` command.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from kbk import console

#: At most this many trials of a Pareto front are listed.
SHOWN_FRONT = 5


def _trial_line(trial: Any, metrics: list[str]) -> str:
    from kbk.sweep.space import format_value

    values = ", ".join(f"{m}={v:.6g}" for m, v in zip(metrics, trial.values, strict=True))
    params = " ".join(f"{k}={format_value(v)}" for k, v in trial.params.items())
    return f"{values} (trial {trial.number}): {params}"


def best_lines(study: Any, metrics: list[str]) -> list[str]:
    """The best complete trial with its params, or the Pareto front of a multi-objective study."""
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return ["no trial has completed yet: nothing is best"]
    if len(study.directions) == 1:
        return [f"best {_trial_line(study.best_trial, metrics)}"]
    front = sorted(study.best_trials, key=lambda t: t.number)
    lines = [f"Pareto front: {len(front)} trials" + (f", the first {SHOWN_FRONT}:" if len(front) > SHOWN_FRONT
                                                     else ":")]
    return lines + [f"  {_trial_line(t, metrics)}" for t in front[:SHOWN_FRONT]]


def say_sweep_closing(study: Any, metrics: list[str], outputs: Path, store: tuple[str, str] | None,
                      parent_run_id: str | None) -> None:
    """The closing lines of a kbk Optuna sweep on `study`. `store`: (tracking URI, experiment), None when not
    tracked; `outputs`: the outputs folder (the report's folder goes under it)."""
    from kbk.urls import redact_url

    name = study.study_name
    for line in best_lines(study, metrics):
        console.say(line)
    if store is None or parent_run_id is None:
        console.say(f"study {name!r}; not tracked (tracking=none): no MLflow runs to compare or report")
        return
    uri, experiment = store
    options = console.store_options(uri, experiment)
    console.say(f"study {name!r}, MLflow parent run {parent_run_id} in {redact_url(uri)}")
    console.say(f"see it:  {console.mlflow_ui_hint(uri)}")
    console.say(f"compare: {console.compare_command(uri, experiment, sweep=name)}")
    report_dir = shlex.quote(str(Path(outputs) / "reports" / name))
    console.say(f"report:  python -m kbk.report --sweep {shlex.quote(name)} --out {report_dir}{options}")


def say_multirun_closing(uri: str, experiment: str, parent_run_id: str) -> None:
    """The closing lines of a plain `-m` multirun with its MLflow parent run."""
    from kbk.urls import redact_url

    console.say(f"multirun done: MLflow parent run {parent_run_id} in {redact_url(uri)}")
    console.say(f"see it:  {console.mlflow_ui_hint(uri)}")
    console.say(f"compare: {console.compare_command(uri, experiment, parent=parent_run_id)}")

