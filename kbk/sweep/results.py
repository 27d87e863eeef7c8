"""What a sweep produced, read back from the study: the trials table, the best trial(s) or Pareto front, the
`optimization_results.yaml` in the sweep folder, and Optuna's plots as PNG (readable offline, in the MLflow UI)."""

from __future__ import annotations

import csv
import io
import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kbk.sweep.engine import DUPLICATE_ATTR, FAIL_REASON_ATTR, PRUNE_REASON_ATTR, SKIP_ATTR, STALE_ATTR

if TYPE_CHECKING:
    from optuna import Study

log = logging.getLogger(__name__)

RESULTS_FILE = "optimization_results.yaml"


def _plain(value: Any) -> Any:
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    return str(value)


def metric_names(study: Study, fallback: Sequence[str] = ()) -> list[str]:
    names = study.metric_names
    if names:
        return list(names)
    return list(fallback) or [f"objective_{i}" for i in range(len(study.directions))]


def trials_table(study: Study, metrics: Sequence[str] = ()) -> list[dict[str, Any]]:
    """One row per trial: number, state, objective values, params, duration, reasons. Proposals the engine
    dropped as duplicates or over budget are left out."""
    names = metric_names(study, metrics)
    rows = []
    for t in study.get_trials(deepcopy=False):
        if SKIP_ATTR in t.user_attrs:
            continue
        row: dict[str, Any] = {"number": t.number, "state": t.state.name}
        for i, name in enumerate(names):
            row[name] = t.values[i] if t.values is not None and i < len(t.values) else None
        row.update({f"params.{k}": _plain(v) for k, v in t.params.items()})
        duration = t.duration
        row["duration_s"] = round(duration.total_seconds(), 3) if duration is not None else None
        row["last_step"] = t.last_step
        reason = (t.user_attrs.get(FAIL_REASON_ATTR) or t.user_attrs.get(PRUNE_REASON_ATTR)
                  or t.user_attrs.get(SKIP_ATTR))
        row["reason"] = reason
        row["duplicate_of"] = t.user_attrs.get(DUPLICATE_ATTR)
        row["stale"] = STALE_ATTR in t.user_attrs
        rows.append(row)
    return rows


def best(study: Study, metrics: Sequence[str] = ()) -> dict[str, Any]:
    """Single objective: best params, value and trial number; several: the Pareto front (`study.best_trials`)."""
    names = metric_names(study, metrics)
    finished = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not finished:
        return {}
    if len(study.directions) == 1:
        t = study.best_trial
        return {"best_trial": t.number, "best_params": {k: _plain(v) for k, v in t.params.items()},
                "best_value": t.value, "metric": names[0]}
    front = sorted(study.best_trials, key=lambda t: t.number)
    return {
        "metrics": names,
        "pareto_front": [
            {"number": t.number, "params": {k: _plain(v) for k, v in t.params.items()},
             "values": dict(zip(names, t.values, strict=False))}
            for t in front
        ],
    }


def counts(study: Study) -> dict[str, int]:
    """Trials by state; FAIL counts only real failures: `stale` ones were cut off with their sweeper process (and
    re-queued), `dropped` ones were duplicate or over-budget proposals that never ran."""
    out = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0, "RUNNING": 0, "WAITING": 0, "stale": 0, "dropped": 0}
    for t in study.get_trials(deepcopy=False):
        if SKIP_ATTR in t.user_attrs:
            out["dropped"] += 1
        elif STALE_ATTR in t.user_attrs and t.state.name == "FAIL":
            out["stale"] += 1
        else:
            out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def write_results(folder: Path, study: Study, storage: str, metrics: Sequence[str] = ()) -> dict[str, Path]:
    """`optimization_results.yaml` (like Hydra's Optuna sweeper, plus counts and the Pareto front),
    `results.csv` and `results.json` in `folder`."""
    from omegaconf import OmegaConf

    from kbk.files import write_atomic
    from kbk.urls import redact_url

    folder.mkdir(parents=True, exist_ok=True)
    summary = {
        "name": "kbk_optuna",
        "study_name": study.study_name,
        "storage": redact_url(storage),
        "directions": [d.name.lower() for d in study.directions],
        "trials": counts(study),
        **best(study, metrics),
    }
    paths = {"yaml": folder / RESULTS_FILE, "csv": folder / "results.csv", "json": folder / "results.json"}
    rows = trials_table(study, metrics)
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    # Several sweeper processes share the sweep folder: a reader must never see a half-written file.
    write_atomic(paths["yaml"], OmegaConf.to_yaml(OmegaConf.create(json.loads(json.dumps(summary, default=str)))))
    write_atomic(paths["csv"], table.getvalue())
    write_atomic(paths["json"], json.dumps(rows, indent=1, default=str))
    return paths


def write_plots(folder: Path, study: Study, metrics: Sequence[str] = ()) -> tuple[list[Path], list[str]]:
    """Optuna's plots as PNG files (`optuna.visualization.matplotlib`: no JavaScript, so they show on an offline
    cluster and in the MLflow UI). Each plot is guarded: one that fails (too few trials, one parameter, ...) is
    reported in the returned errors, never raised."""
    import matplotlib

    matplotlib.use("Agg")  # before pyplot, which Optuna's matplotlib plots use: no display on a cluster node
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as vis

    names = metric_names(study, metrics)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    params = sorted({p for t in complete for p in t.params})
    multi = len(study.directions) > 1
    plots: list[tuple[str, Any]] = []
    targets = [(i, n) for i, n in enumerate(names)] if multi else [(None, names[0])]
    for i, name in targets:
        kw = {"target": (lambda t, i=i: t.values[i]), "target_name": name} if i is not None else {"target_name": name}
        tag = f"_{name.replace('/', '_')}" if multi else ""
        plots.append((f"optimization_history{tag}", lambda kw=kw: vis.plot_optimization_history(study, **kw)))
        if len(params) >= 1:
            plots.append((f"parallel_coordinate{tag}", lambda kw=kw: vis.plot_parallel_coordinate(study, **kw)))
        if len(params) >= 2:
            plots.append((f"contour{tag}", lambda kw=kw: vis.plot_contour(study, **kw)))
        if len(params) >= 2 and len(complete) >= 4:
            plots.append((f"param_importances{tag}", lambda kw=kw: vis.plot_param_importances(study, **kw)))
    if not multi and any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        plots.append(("intermediate_values", lambda: vis.plot_intermediate_values(study)))
    if multi and len(names) in (2, 3):
        plots.append(("pareto_front", lambda: vis.plot_pareto_front(study, target_names=names)))
    folder.mkdir(parents=True, exist_ok=True)
    written, errors = [], []
    for name, make in plots:
        try:
            path = folder / f"{name}.png"
            # rc_context: Optuna's plots switch the process-wide style to ggplot; put it back afterwards
            with warnings.catch_warnings(), matplotlib.rc_context():
                warnings.simplefilter("ignore")  # experimental-API and importance-evaluator notes, not problems
                axes = make()
                figure = (axes.flat[0] if hasattr(axes, "flat") else axes).get_figure()
                figure.set_size_inches(max(figure.get_size_inches()[0], 7.0), max(figure.get_size_inches()[1], 4.5))
                figure.savefig(path, dpi=120, bbox_inches="tight")
            written.append(path)
        except Exception as e:  # noqa: BLE001 (a plot must never fail the sweep)
            errors.append(f"{name}: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
        finally:
            plt.close("all")
    for error in errors:
        log.warning("sweep plot skipped: %s", error)
    return written, errors
