"""Compare MLflow runs: which runs (a sweep, a parent's children, a filter), grouped by what was swept, with
n, mean, std and a Student-t 95% interval per group and metric, paired differences against a baseline, tables
and plots. The command line is `python -m kbk.compare`; in a notebook:

    from kbk import compare
    runs = compare.runs(sweep="koopman_dim_grid")                  # DataFrame: one row per finished trial
    compare.summary(runs, metrics=["val/ppl"])                      # one row per (koopman.dim, metric)
    compare.differences(runs, baseline="koopman.dim=256", metrics=["val/ppl"])

`runs` keeps what was swept in `runs.attrs["swept"]`, so `summary` groups by it unless told otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd

from kbk.compare import stats
from kbk.compare.select import Selection, metric_columns, select, swept_params
from kbk.errors import KbkError

#: Shown when no --metric is given (those the runs have).
DEFAULT_METRICS = ("val/ppl", "val/ppl_koopman")
#: More differing params than this make an unreadable table: the user chooses (--group-by) or narrows the runs.
MAX_AUTO_GROUP_KEYS = 5

__all__ = ["Comparison", "compare_runs", "differences", "runs", "summary"]


def runs(uri: str | None = None, experiment: str = "kbk", *, sweep: str | None = None, parent: str | None = None,
         filter: str = "", status: str | Sequence[str] | None = "FINISHED") -> pd.DataFrame:  # noqa: A002
    """The selected runs as `mlflow.search_runs` gives them (sweep parents left out); `attrs["swept"]` holds the
    keys that were swept (the parent's search space, or the params that differ)."""
    selection = select(uri, experiment, sweep=sweep, parent=parent, filter_string=filter, status=status)
    return labelled(selection.runs, selection, sweep)


def labelled(frame: pd.DataFrame, selection: Selection, sweep: str | None = None) -> pd.DataFrame:
    """`frame` (runs of `selection`) with what a comparison needs to know about it in `frame.attrs`."""
    frame.attrs.update(swept=swept_params(selection), uri=selection.uri, experiment=selection.experiment,
                       sweep=sweep)
    return frame


def _group_by(frame: pd.DataFrame, group_by: Sequence[str] | None) -> list[str]:
    if group_by is not None:
        return list(group_by)
    if "swept" in frame.attrs:
        return list(frame.attrs["swept"])
    return swept_params(Selection(frame, pd.DataFrame(), "", ""))


def _metrics(frame: pd.DataFrame, metrics: Sequence[str] | None) -> list[str]:
    have = metric_columns(frame)
    if metrics:
        missing = [m for m in metrics if m not in have]
        if missing:
            close = [m for m in have if any(part in m for part in missing[0].split("/") if part)][:8]
            raise KbkError(f"no selected run has the metric {missing[0]!r}; "
                           f"{'similar: ' + ', '.join(close) if close else 'metrics: ' + ', '.join(have[:12])}")
        return list(metrics)
    chosen = [m for m in DEFAULT_METRICS if m in have]
    if not chosen:
        raise KbkError(f"the selected runs have none of the default metrics {DEFAULT_METRICS}: pass --metric "
                       f"(they have: {', '.join(have[:12]) or 'no metrics'})")
    return chosen


def summary(frame: pd.DataFrame, group_by: Sequence[str] | None = None, metrics: Sequence[str] | None = None,
            confidence: float = 0.95) -> pd.DataFrame:
    """n, mean, std, ci_low, ci_high per group (default: the swept params) and metric."""
    return compare_runs(frame, group_by, metrics, confidence=confidence).summary


def differences(frame: pd.DataFrame, baseline: str | Mapping[str, str], group_by: Sequence[str] | None = None,
                metrics: Sequence[str] | None = None, confidence: float = 0.95) -> pd.DataFrame:
    """Each group minus the baseline group (e.g. `"koopman.dim=256"`), paired by seed where the seeds match."""
    return compare_runs(frame, group_by, metrics, baseline, confidence).differences


@dataclass
class Comparison:
    """Everything a table, plot or report of one selection needs."""

    runs: pd.DataFrame
    group_by: list[str]
    metrics: list[str]
    summary: pd.DataFrame
    differences: pd.DataFrame | None = None
    baseline: dict[str, str] = field(default_factory=dict)
    confidence: float = 0.95
    # Metrics with one value in every selected run (a synthetic corpus's Bayes floor, say): stated once, never
    # "compared" (a difference of exactly 0 is not a finding about the settings).
    constants: dict[str, float] = field(default_factory=dict)

    @property
    def title(self) -> str:
        sweep = self.runs.attrs.get("sweep")
        return f"sweep {sweep}" if sweep else f"experiment {self.runs.attrs.get('experiment', 'kbk')}"


def compare_runs(frame: pd.DataFrame, group_by: Sequence[str] | None = None, metrics: Sequence[str] | None = None,
                 baseline: str | Mapping[str, str] | None = None, confidence: float = 0.95) -> Comparison:
    """The comparison of `frame` (from `runs`): groups, metrics, summary and, with a baseline, differences."""
    if frame.empty:
        raise KbkError("no runs match: check --sweep/--parent/--filter, or pass --status all to include runs that "
                       "did not finish")
    if not 0 < confidence < 1:
        raise KbkError(f"--confidence {confidence} must be between 0 and 1 (e.g. 0.95)")
    keys = _group_by(frame, group_by)
    if group_by is None and len(keys) > MAX_AUTO_GROUP_KEYS:
        raise KbkError(f"the selected runs differ in {len(keys)} params ({', '.join(keys[:8])}"
                       f"{', ...' if len(keys) > 8 else ''}): choose with --group-by, or select comparable runs "
                       f"with --sweep, --parent or --filter")
    try:
        spec = stats.parse_group_spec(baseline) if baseline else {}
    except ValueError as e:
        raise KbkError(f"--baseline: {e}") from None
    keys += [k for k in spec if k not in keys]
    unknown = [k for k in keys if f"params.{k}" not in frame]
    if unknown:
        params = sorted(c[len("params."):] for c in frame.columns if c.startswith("params."))
        raise KbkError(f"no selected run has the param {unknown[0]!r} (params: {', '.join(params[:15])} ...)")
    chosen = _metrics(frame, metrics)
    try:
        diffs = stats.differences(frame, keys, chosen, spec, confidence) if spec else None
    except ValueError as e:
        raise KbkError(f"--baseline: {e}") from None
    constants = constant_metrics(frame, chosen)
    if diffs is not None:
        diffs = diffs[~diffs["metric"].isin(list(constants))].reset_index(drop=True)
    return Comparison(frame, keys, chosen, stats.summary(frame, keys, chosen, confidence), diffs, spec, confidence,
                      constants)


def constant_metrics(frame: pd.DataFrame, metrics: Sequence[str]) -> dict[str, float]:
    """The metrics that take one and the same value in every run that logged them (at least two runs)."""
    constants = {}
    for m in metrics:
        values = frame[f"metrics.{m}"].dropna()
        if len(values) > 1 and values.nunique() == 1:
            constants[m] = float(values.iloc[0])
    return constants
