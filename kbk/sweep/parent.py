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
    from kbk.urls import redact_url

    key, sep, value = override.partition("=")
    return f"{key}{sep}{redact_url(value)}" if "://" in value else override


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
        from kbk.tracking.mlflow_tracker import MlflowTracker
        from kbk.tracking.store import ensure_experiment
        from kbk.urls import redact_url

        ensure_experiment(uri, experiment)  # schema + experiment once, here, before any trial process starts
        stored = study.user_attrs.get(PARENT_ATTR) or {}
        tracker = None
        shown_uri = redact_url(uri)  # the study lives in a shared storage: no password goes there
        if stored.get("uri") == shown_uri and stored.get("experiment") == experiment and stored.get("run_id"):
            try:
                tracker = MlflowTracker.start(uri, experiment, run_id=stored["run_id"], tags=tags,
                                              flush_interval_s=None)
                log.info("sweep parent run %s reopened", tracker.run_id)
            except TrackingError as e:  # deleted, or the store was replaced: a new parent
                log.warning("cannot reopen the sweep's parent run %s (%s); creating a new one",
                            stored["run_id"], e)
        if tracker is None:
            tracker = MlflowTracker.start(uri, experiment, run_name=f"sweep-{study.study_name}",
                                          tags={**tags, ROLE_TAG: "sweep"}, flush_interval_s=None)
            study.set_user_attr(PARENT_ATTR, {"uri": shown_uri, "experiment": experiment, "run_id": tracker.run_id})
            log.info("sweep parent run %s created in %s", tracker.run_id, shown_uri)
        tracker.log_params(params)
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
