"""Compare MLflow runs: tables of mean ± std over seeds, and plots.

    python -m kbk.compare                                   # every finished run of experiment "kbk"
    python -m kbk.compare --sweep koopman_dim_grid          # the trials of one sweep (tag kbk.sweep)
    python -m kbk.compare --group-by koopman.dim schedule.type --metric val/ppl val/ppl_koopman \
        --plot outputs/compare.png --csv outputs/compare.csv

Runs are grouped by the values of `--group-by` params (default: every param that differs between the selected
runs, except the seed); each group shows n, and mean ± std (sample std, n−1) of each metric's final value.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Params that never define a group: they differ between every run of a study, or only say where things went.
IGNORED_PARAMS = ("seed", "data.seed", "paths.outputs", "tracking.uri", "tracking.run_name", "data.cache_dir",
                  "model.n_params", "model.n_params_koopman", "model.n_params_lm")
DEFAULT_METRICS = ("val/ppl", "val/ppl_koopman", "val/loss", "val/loss_floor", "perf/step_ms")


@dataclass
class Run:
    run_id: str
    name: str
    params: dict[str, str]
    metrics: dict[str, float]


@dataclass
class Group:
    key: tuple[str, ...]
    runs: list[Run] = field(default_factory=list)

    def values(self, metric: str) -> list[float]:
        return [r.metrics[metric] for r in self.runs if metric in r.metrics]

    def mean_std(self, metric: str) -> tuple[float, float, int]:
        v = self.values(metric)
        if not v:
            return math.nan, math.nan, 0
        return statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v)


def load_runs(uri: str, experiment: str, sweep: str | None = None, parent: str | None = None,
              filter_string: str = "", status: str | None = "FINISHED") -> list[Run]:
    from mlflow import MlflowClient

    from kbk.errors import TrackingError

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise TrackingError(f"no experiment {experiment!r} in {uri}: run an experiment first, or pass --experiment")
    clauses = [c for c in (filter_string,) if c]
    if sweep:
        clauses.append(f"tags.`kbk.sweep` = '{sweep}'")
    if parent:
        clauses.append(f"tags.mlflow.parentRunId = '{parent}'")
    if status:
        clauses.append(f"attributes.status = '{status}'")
    runs = client.search_runs([exp.experiment_id], " and ".join(clauses), max_results=50_000)
    return [Run(r.info.run_id, r.info.run_name, dict(r.data.params), dict(r.data.metrics)) for r in runs]


def varying_params(runs: Sequence[Run]) -> list[str]:
    keys = sorted(set().union(*(r.params.keys() for r in runs))) if runs else []
    return [k for k in keys if k not in IGNORED_PARAMS and len({r.params.get(k) for r in runs}) > 1]


def group_runs(runs: Sequence[Run], group_by: Sequence[str]) -> list[Group]:
    groups: dict[tuple[str, ...], Group] = {}
    for run in runs:
        key = tuple(run.params.get(p, "—") for p in group_by)
        groups.setdefault(key, Group(key)).runs.append(run)
    return sorted(groups.values(), key=lambda g: tuple(_sortable(v) for v in g.key))


def _sortable(value: str) -> tuple[int, Any]:
    try:
        return (0, float(value))
    except ValueError:
        return (1, value)


def table_rows(groups: Sequence[Group], group_by: Sequence[str], metrics: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    for g in groups:
        row: dict[str, Any] = dict(zip(group_by, g.key, strict=True))
        row["n"] = len(g.runs)
        for m in metrics:
            mean, std, _ = g.mean_std(m)
            row[f"{m} mean"], row[f"{m} std"] = mean, std
        rows.append(row)
    return rows


def print_table(rows: Sequence[dict[str, Any]], group_by: Sequence[str], metrics: Sequence[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(*group_by, "n", *metrics)
    for row in rows:
        cells = [str(row[p]) for p in group_by] + [str(row["n"])]
        cells += [f"{row[f'{m} mean']:.4g} ± {row[f'{m} std']:.2g}" if not math.isnan(row[f"{m} mean"]) else "—"
                  for m in metrics]
        table.add_row(*cells)
    Console(file=sys.stdout, width=200).print(table)


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot(groups: Sequence[Group], group_by: Sequence[str], metrics: Sequence[str], path: Path) -> Path:
    """One panel per metric: mean ± std against the first group-by param, one line per value of the others."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5 * len(metrics), 4), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    lines: dict[tuple[str, ...], list[Group]] = {}
    for g in groups:
        lines.setdefault(g.key[1:], []).append(g)
    for ax, metric in zip(axes, metrics, strict=True):
        for rest, members in lines.items():
            xs = [g.key[0] for g in members]
            stats = [g.mean_std(metric) for g in members]
            label = ", ".join(f"{p}={v}" for p, v in zip(group_by[1:], rest, strict=True)) or None
            ax.errorbar(range(len(xs)), [s[0] for s in stats], yerr=[s[1] for s in stats], marker="o", capsize=3,
                        label=label)
            ax.set_xticks(range(len(xs)), xs)
        ax.set_xlabel(group_by[0])
        ax.set_ylabel(metric)
        if len(lines) > 1:
            ax.legend(fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    from kbk.errors import KbkError
    from kbk.paths import outputs_dir
    from kbk.tracking.store import resolve_tracking_uri

    parser = argparse.ArgumentParser(prog="python -m kbk.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uri", default=None, help="tracking URI (default: SQLite under outputs/)")
    parser.add_argument("--experiment", default="kbk")
    parser.add_argument("--sweep", default=None, help="only the trials of this sweep (study name)")
    parser.add_argument("--parent", default=None, help="only the children of this parent run id")
    parser.add_argument("--filter", default="", help="an MLflow search filter, e.g. \"params.`koopman.dim` = '256'\"")
    parser.add_argument("--all-statuses", action="store_true", help="include FAILED/KILLED/RUNNING runs")
    parser.add_argument("--group-by", nargs="*", default=None, help="params to group by (default: those that vary)")
    parser.add_argument("--metric", nargs="*", default=None, help=f"metrics (default: {' '.join(DEFAULT_METRICS)})")
    parser.add_argument("--csv", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        uri = resolve_tracking_uri(args.uri, outputs_dir())
        runs = load_runs(uri, args.experiment, args.sweep, args.parent, args.filter,
                         None if args.all_statuses else "FINISHED")
        if not runs:
            raise KbkError(f"no runs match in experiment {args.experiment!r} at {uri}: check --sweep/--filter, or "
                           f"pass --all-statuses to include unfinished runs")
        group_by = args.group_by if args.group_by is not None else varying_params(runs)
        metrics = args.metric or [m for m in DEFAULT_METRICS if any(m in r.metrics for r in runs)]
        groups = group_runs(runs, group_by)
        rows = table_rows(groups, group_by, metrics)
        print_table(rows, group_by, metrics)
        if args.csv:
            write_csv(rows, args.csv)
            print(f"wrote {args.csv}")
        if args.plot:
            if not group_by:
                raise KbkError("--plot needs at least one --group-by param (the runs do not differ in any)")
            print(f"wrote {plot(groups, group_by, metrics, args.plot)}")
    except KbkError as exc:
        print(f"kbk.compare: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
