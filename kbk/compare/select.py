"""Which runs to compare: MLflow runs as a pandas DataFrame (`mlflow.search_runs`), the sweep parents beside
them, and which params were swept (the keys a comparison groups by).

Every kbk run is tagged with its role (`kbk.role`): `run` (a single run), `trial` (a job of a sweep) or `sweep`
(the parent of a sweep's trials). Parents are never rows of a comparison; they hold the search space instead.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from kbk.errors import KbkError

ROLE_TAG = "tags.kbk.role"
PARENT_TAG = "tags.mlflow.parentRunId"
#: A sweep parent logs its search space as params `sweep.params.<key>` (kbk's sweeper and plain multiruns).
SPACE_PREFIX = "sweep.params."
#: Params that never define a group: where things went, how to resume, what follows from other settings, and
#: the replicate's seed (fnmatch patterns against the dotted key).
#: Metrics a comparison derives from two logged ones (a − b, per run and per step): the distance to the best
#: possible. On data with an exact Bayes floor (data=synthetic logs val/loss_floor), nats per token above it.
DERIVED = {
    "val/loss_above_floor": ("val/loss", "val/loss_floor"),
    "val/loss_koopman_above_floor": ("val/loss_koopman", "val/loss_floor"),
}

NOT_A_FACTOR = ("seed", "data.seed", "paths.*", "tracking.*", "hydra.*", "sweep.*", "trainer.resume",
                "trainer.log_checkpoint", "*_dir", "*.cache_dir", "*.path", "*_uri", "model.n_params*",
                "n_params*", "name")
STATUSES = ("FINISHED", "FAILED", "KILLED", "RUNNING", "SCHEDULED")


@dataclass
class Selection:
    """The runs to compare (one row per run) and the sweep parents they belong to."""

    runs: pd.DataFrame
    parents: pd.DataFrame
    uri: str
    experiment: str


def tracking_uri(uri: str | None = None) -> str:
    """The store to read: `uri`, or kbk's default SQLite under outputs/ — which must already exist (reading
    never creates a store)."""
    from kbk.paths import outputs_dir
    from kbk.tracking.store import check_server, resolve_tracking_uri, sqlite_path

    resolved = resolve_tracking_uri(uri, outputs_dir())
    path = sqlite_path(resolved)
    if path is not None and not path.is_file():
        raise KbkError(f"no MLflow store at {path}: run an experiment first (python -m kbk.run), or point --uri at "
                       f"a store (sqlite:////abs/path/mlflow.db or http://host:port)")
    if resolved.startswith(("http://", "https://")):
        check_server(resolved)
    return resolved


def select(uri: str | None = None, experiment: str = "kbk", *, sweep: str | None = None, parent: str | None = None,
           filter_string: str = "", status: str | Sequence[str] | None = "FINISHED") -> Selection:
    """Runs of `experiment` (optionally one sweep's trials, one parent's children, an MLflow filter), with
    `status` one status, several, or None for all; sweep parents go to `Selection.parents`."""
    import mlflow
    from mlflow import MlflowClient

    uri = tracking_uri(uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise KbkError(f"no experiment {experiment!r} in {uri}; it has: {', '.join(names) or 'none'}. "
                       f"Fix: pass --experiment <name>")
    clauses = [filter_string] if filter_string else []
    if sweep:
        clauses.append(f"tags.`kbk.sweep` = '{sweep}'")
    frames = []
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)  # mlflow.search_runs reads the global URI; put the caller's back after
    try:
        frames.append(mlflow.search_runs([exp.experiment_id], " and ".join(clauses), output_format="pandas"))
        if parent:
            frames.append(mlflow.search_runs([exp.experiment_id], f"attributes.run_id = '{parent}'",
                                             output_format="pandas"))
    except mlflow.exceptions.MlflowException as e:
        raise KbkError(f"MLflow refused the search: {str(e).splitlines()[0]}. Fix the --filter expression, e.g. "
                       f"\"params.`koopman.dim` = '256'\" (backquote keys with dots)") from None
    finally:
        mlflow.set_tracking_uri(previous)
    found = pd.concat([f for f in frames if not f.empty], ignore_index=True) if any(
        not f.empty for f in frames) else frames[0]
    found = found.drop_duplicates("run_id") if "run_id" in found else found
    parents_mask = _is_parent(found)
    parents, runs = found[parents_mask], found[~parents_mask]
    if parent:
        runs = runs[runs.get(PARENT_TAG, pd.Series(index=runs.index, dtype=object)) == parent]
        parents = parents[parents["run_id"] == parent]
    if status:
        wanted = [status] if isinstance(status, str) else list(status)
        runs = runs[runs["status"].isin(wanted)]
    runs = with_derived_metrics(runs)
    return Selection(runs.reset_index(drop=True), parents.reset_index(drop=True), uri, experiment)


def _is_parent(frame: pd.DataFrame) -> pd.Series:
    """Sweep parents: role `sweep` (or `multirun`, as older kbk tagged them), or the parent of a run found."""
    if frame.empty:
        return pd.Series([], dtype=bool)
    role = frame.get(ROLE_TAG, pd.Series(index=frame.index, dtype=object))
    parent_ids = set(frame.get(PARENT_TAG, pd.Series(dtype=object)).dropna())
    return role.isin(["sweep", "multirun"]) | frame["run_id"].isin(parent_ids)


def is_factor(key: str) -> bool:
    return not any(fnmatch.fnmatchcase(key, pattern) for pattern in NOT_A_FACTOR)


def swept_params(selection: Selection) -> list[str]:
    """The keys to group by: the parents' search space (a sweep or multirun), else the params that differ
    between the runs; never the seed, nor a key that only says where things went."""
    space = [c[len("params." + SPACE_PREFIX):] for c in selection.parents.columns
             if c.startswith("params." + SPACE_PREFIX) and selection.parents[c].notna().any()]
    if space:
        keys = [k for k in space if is_factor(k)]
    else:
        keys = [c[len("params."):] for c in selection.runs.columns if c.startswith("params.")]
        keys = [k for k in keys if is_factor(k)
                and selection.runs[f"params.{k}"].fillna("—").nunique() > 1]
    return sorted(keys)


def metric_columns(runs: pd.DataFrame) -> list[str]:
    return sorted(c[len("metrics."):] for c in runs.columns if c.startswith("metrics.") and runs[c].notna().any())


def _history(client, run_id: str, metric: str) -> pd.DataFrame:
    """One run's (step, value) history of `metric`; a DERIVED metric is the difference of its parts at the steps
    both logged."""
    if metric in DERIVED:
        a, b = (_history(client, run_id, m).set_index("step")["value"] for m in DERIVED[metric])
        both = (a - b).dropna()
        return pd.DataFrame({"step": both.index.astype(int), "value": both.to_numpy()})
    points = client.get_metric_history(run_id, metric)
    frame = pd.DataFrame({"step": [p.step for p in points], "value": [p.value for p in points]})
    return frame.drop_duplicates("step", keep="last").sort_values("step")


def with_derived_metrics(runs: pd.DataFrame) -> pd.DataFrame:
    """`runs` plus a `metrics.<name>` column for each DERIVED metric whose two parts some run logged."""
    runs = runs.copy()
    for name, (a, b) in DERIVED.items():
        if f"metrics.{a}" in runs and f"metrics.{b}" in runs:
            runs[f"metrics.{name}"] = runs[f"metrics.{a}"] - runs[f"metrics.{b}"]
    return runs


def metric_histories(uri: str, run_ids: Sequence[str], metrics: Sequence[str]) -> dict[str, dict[str, pd.DataFrame]]:
    """{run id: {metric: frame of (step, value)}} from the store's metric histories."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    out: dict[str, dict[str, pd.DataFrame]] = {}
    for run_id in run_ids:
        out[run_id] = {metric: _history(client, run_id, metric) for metric in metrics}
    return out
