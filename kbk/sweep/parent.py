"""The sweep's MLflow parent run: created once, before any trial starts, kept on the study (so a resumed or
parallel sweeper process reuses it), and given the sweep's summary at the end.

Params of a run cannot change, and a resumed sweep may find a new best: so the parent's params are the sweep's
fixed settings (its base config and search space, which `optuna_sweeper.check_settings` keeps identical for a
study), while the best trial goes to metrics (`best/<metric>`, one step per finished-trial count), tags
(`best.trial`, `best.params.<name>`) and the artifacts (`results.csv`, `results.json`,
`optimization_results.yaml`, `plots/*.png`).
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kbk.errors import TrackingError
from kbk.urls import redact_url

if TYPE_CHECKING:
    from optuna import Study

    from kbk.tracking.mlflow_tracker import MlflowTracker

log = logging.getLogger(__name__)

PARENT_ATTR = "kbk.mlflow_parent"
ROLE_TAG = "kbk.role"
TRIAL_TAG = "optuna.trial_number"
#: The command that reproduces the sweep, on its parent run (read by `kbk.report`).
COMMAND_TAG = "kbk.command"
#: Overrides Hydra or kbk add to a sweep's command line by themselves.
_IMPLIED_OVERRIDES = ("hydra.mode=", "hydra.job.env_set", "++hydra.job.env_set", "+hydra.job.env_set")


def sweep_command(hydra_cfg: Any) -> str:
    """`python -m kbk.run -m <overrides>` of the running sweep, from Hydra's record of its command line in
    `hydra_cfg` (the composed config's `hydra` node; URL passwords redacted)."""
    import shlex

    recorded = hydra_cfg.overrides
    overrides = [str(o) for o in (*recorded.hydra, *recorded.task) if not str(o).startswith(_IMPLIED_OVERRIDES)]
    return " ".join(["python -m kbk.run -m", *map(shlex.quote, map(redact_override, overrides))])


def redact_override(override: str) -> str:
    """`key=scheme://user:PW@host` → `key=scheme://user:***@host`; other overrides unchanged."""
    key, sep, value = override.partition("=")
    return f"{key}{sep}{redact_url(value)}" if "://" in value else override


def tracking_store(cfg: Any) -> tuple[str, str] | None:
    """(tracking URI, experiment) of a composed config, the URI resolved as every job resolves it; None with
    `tracking=none`."""
    tracking = cfg.get("tracking")
    if tracking is None or tracking.get("backend", "mlflow") == "none":
        return None
    from kbk.paths import outputs_dir
    from kbk.tracking.store import resolve_tracking_uri

    return resolve_tracking_uri(tracking.get("uri"), outputs_dir(cfg.paths.outputs)), tracking.get("experiment", "kbk")


def open_parent_run(uri: str, experiment: str, *, name: str, tags: Mapping[str, Any], params: Mapping[str, Any],
                    run_id: str | None = None) -> MlflowTracker:
    """The MLflow parent run of a sweep or a multirun, before any job starts: the store's schema and experiment
    made once, here (jobs starting together would race to make them); then run `run_id` reopened if it is still
    there, else a new run; its params logged."""
    from kbk.tracking.mlflow_tracker import MlflowTracker
    from kbk.tracking.resume import reopen_run
    from kbk.tracking.store import ensure_experiment

    ensure_experiment(uri, experiment)
    tracker = None
    if run_id:
        try:
            tracker = reopen_run(uri, experiment, run_id, tags=tags, flush_interval_s=None)
            log.info("parent run %s reopened", run_id)
        except TrackingError as e:  # deleted, or the store was replaced: a new parent
            log.warning("cannot reopen the parent run %s (%s); creating a new one", run_id, e)
    if tracker is None:
        tracker = MlflowTracker.start(uri, experiment, run_name=name, tags={**tags, ROLE_TAG: "sweep"},
                                      flush_interval_s=None)
        log.info("parent run %s created in %s", tracker.run_id, redact_url(uri))
    tracker.log_params(params)
    return tracker


class SweepParent:
    def __init__(self, tracker: MlflowTracker) -> None:
        self.tracker = tracker

    @property
    def run_id(self) -> str:
        return self.tracker.run_id

    @classmethod
    def open(cls, uri: str, experiment: str, study: Study, *, params: Mapping[str, Any],
             tags: Mapping[str, Any]) -> SweepParent:
        """Reopen the parent recorded on the study (same store and experiment), or create it and record it."""
        stored = study.user_attrs.get(PARENT_ATTR) or {}
        shown_uri = redact_url(uri)  # the study lives in a shared storage: no password goes there
        same_store = stored.get("uri") == shown_uri and stored.get("experiment") == experiment
        tracker = open_parent_run(uri, experiment, name=f"sweep-{study.study_name}", tags=tags, params=params,
                                  run_id=stored.get("run_id") if same_store else None)
        if tracker.run_id != stored.get("run_id"):
            study.set_user_attr(PARENT_ATTR, {"uri": shown_uri, "experiment": experiment, "run_id": tracker.run_id})
        return cls(tracker)

    # ----------------------------------------------------------------------------------------------- children

    def children(self) -> list[Any]:
        from mlflow.entities import ViewType

        client = self.tracker.client
        filter_string = f"tags.`mlflow.parentRunId` = '{self.run_id}'"
        runs, token = [], None
        while True:
            page = client.search_runs([self.tracker.experiment_id], filter_string, ViewType.ACTIVE_ONLY,
                                      max_results=1000, page_token=token)
            runs += list(page)
            token = page.token
            if not token:
                return runs

    def settle_children(self, endings: Mapping[int, tuple[str, str]]) -> int:
        """Make child runs agree with their trials: {trial number: (status, reason)}. A run still RUNNING (its
        process was killed) or FINISHED with a non-finite objective gets `status` and the reason tag."""
        if not endings:
            return 0
        from kbk.tracking.mlflow_tracker import END_REASON_TAG

        client = self.tracker.client
        fixed = 0
        try:
            for run in self.children():
                number = run.data.tags.get(TRIAL_TAG)
                if number is None or not number.isdigit() or int(number) not in endings:
                    continue
                status, reason = endings[int(number)]
                if run.info.status == status or run.info.status in ("FAILED", "KILLED"):
                    continue
                client.set_tag(run.info.run_id, END_REASON_TAG, reason[:8000])
                client.set_terminated(run.info.run_id, status)
                fixed += 1
        except Exception as e:  # noqa: BLE001 (bookkeeping of the tracking store must not stop a sweep)
            log.warning("could not update the trials' MLflow runs: %s", e)
        return fixed

    # ------------------------------------------------------------------------------------------------ summary

    def summarize(self, study: Study, metrics: Sequence[str], results_dir: Path, *, plots: bool) -> list[str]:
        """Best values, counts, the results table and plots on the parent; returns the plot errors."""
        from kbk.sweep import results

        names = results.metric_names(study, metrics)
        counts = results.counts(study)
        step = counts["COMPLETE"] + counts["PRUNED"]
        values: dict[str, float] = {f"trials/{k.lower()}": float(v) for k, v in counts.items()}
        best = results.best(study, names)
        tags: dict[str, Any] = {}
        if "best_value" in best:
            values[f"best/{names[0]}"] = float(best["best_value"])
            tags["best.trial"] = best["best_trial"]
            tags.update({f"best.params.{k}": v for k, v in best["best_params"].items()})
        elif "pareto_front" in best:
            values["pareto/size"] = float(len(best["pareto_front"]))
            tags["best.pareto_trials"] = ",".join(str(p["number"]) for p in best["pareto_front"])
        values = {k: v for k, v in values.items() if math.isfinite(v)}
        errors: list[str] = []
        self.tracker.log_metrics(values, step=step)
        self.tracker.set_tags(tags)
        for name in ("optimization_results.yaml", "results.csv", "results.json"):
            if (results_dir / name).is_file():
                self.tracker.log_artifact(results_dir / name)
        if plots:
            with tempfile.TemporaryDirectory() as tmp:
                written, errors = results.write_plots(Path(tmp) / "plots", study, names)
                if written:
                    self.tracker.log_artifact(Path(tmp) / "plots", "plots")
            if errors:
                self.tracker.set_tags({"kbk.plot_errors": " | ".join(errors)})
        self.tracker.flush()
        return errors

    def end(self, status: str = "FINISHED", reason: str | None = None) -> None:
        self.tracker.end(status, reason)

    def detach(self) -> None:
        """Leave the run open for the sweeper processes still working on the study."""
        self.tracker.detach()
