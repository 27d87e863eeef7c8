"""A parent MLflow run for plain Hydra multiruns (`python -m kbk.run -m koopman.dim=128,256`, Hydra's basic
sweeper), registered in `conf/config.yaml` under `hydra.callbacks`.

`on_multirun_start` (in the process that sweeps) creates the parent run, with the store's schema and experiment,
before any job starts, and exports `KBK_PARENT_RUN_ID` / `KBK_SWEEP` so in-process jobs inherit them.
`on_job_start` sets them again in whatever process runs the job: a reused joblib worker (spawned before this
multirun, so its environment is older) or a submitit job gets this callback with the parent id inside (Hydra
pickles the callbacks with the job). `on_job_end` puts the job's environment back; `on_multirun_end` ends the
parent FINISHED and prints its id and the `kbk.compare` command. If the multirun dies first, the tracker's exit
hook ends it FAILED.

A no-op with `tracking.backend=none`, for single runs, and when kbk's Optuna sweeper runs the multirun (it makes
its own parent run, kept on the study).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from kbk.sweep import ENV_PARENT_RUN, ENV_SWEEP
from kbk.sweep.closing_lines import say_multirun_closing
from kbk.sweep.parent import COMMAND_TAG, open_parent_run, redact_override, sweep_command, tracking_store

log = logging.getLogger(__name__)


def swept_overrides(overrides: list[str]) -> dict[str, str]:
    """`["koopman.dim=128,256", "model=tiny"]` → `{"sweep.params.koopman.dim": "128,256"}`: the overrides that
    sweep (comma lists, `range(...)`, `choice(...)`), as a kbk sweeper's parent logs its search space."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return {f"sweep.params.{o.key_or_group}": o.input_line.partition("=")[2] for o in parsed if o.is_sweep_override()}


def summarize_children(tracker: Any, experiment: str, metric: Any) -> None:
    """The multirun's results on its parent: `results.csv` / `results.md` (the trials grouped by the swept
    params, as `kbk.compare` shows them) and the best value of each optimized metric with its run."""
    import tempfile
    from pathlib import Path

    from kbk import compare
    from kbk.compare import tables
    from kbk.errors import KbkError

    metrics = [metric] if isinstance(metric, str) else [str(m) for m in metric]
    try:
        frame = compare.runs(tracker.uri, experiment, parent=tracker.run_id)
        if frame.empty:
            return
        have = [m for m in metrics if f"metrics.{m}" in frame]
        result = compare.compare_runs(frame, metrics=have or None)
    except KbkError as e:  # nothing finished, or no metric to show: the parent still ends FINISHED
        log.warning("multirun summary skipped: %s", e)
        return
    best_tags, best_values = {}, {}
    for m in have:
        best = frame.loc[frame[f"metrics.{m}"].idxmin()]  # kbk's metrics (loss, ppl, ms) are lower-is-better
        best_values[f"best/{m}"] = float(best[f"metrics.{m}"])
        best_tags[f"best.{m}.run"] = best["tags.mlflow.runName"]
        best_tags.update({f"best.{m}.params.{k}": best[f"params.{k}"] for k in result.group_by})
    tracker.log_metrics(best_values, step=len(frame))
    tracker.set_tags(best_tags)
    wide = tables.wide(result.summary, result.group_by)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "results.csv").write_text(tables.as_csv(result.summary, None, result.group_by))
        (Path(tmp) / "results.md").write_text(tables.markdown(wide))
        tracker.log_artifact(Path(tmp) / "results.csv")
        tracker.log_artifact(Path(tmp) / "results.md")
    tracker.flush()


def _uses_kbk_sweeper(config: DictConfig) -> bool:
    target = str(config.hydra.sweeper.get("_target_", "")) if config.get("hydra") else ""
    return "kbk_sweeper" in target or target.startswith("kbk.")


class MultirunParent(Callback):
    def __init__(self) -> None:
        self.parent_run_id: str | None = None
        self.sweep_name: str | None = None
        self._tracker: Any = None
        self._saved_env: dict[str, str | None] = {}
        self._experiment = "kbk"
        self._metric: Any = "val/ppl"

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if _uses_kbk_sweeper(config):
            return
        store = tracking_store(config)
        if store is None:
            return
        from pathlib import Path

        uri, experiment = store
        sweep_dir = Path(str(config.hydra.sweep.dir))
        self.sweep_name = f"{config.get('name', 'kbk')}/{sweep_dir.name}"
        overrides = [redact_override(str(o)) for o in config.hydra.overrides.task]
        tags = {"kbk.sweep": self.sweep_name, "kbk.sweep_dir": str(sweep_dir),
                "kbk.overrides": " ".join(overrides)[:8000], COMMAND_TAG: sweep_command(config.hydra)}
        # The swept overrides are the search space (`kbk.compare` groups by them), the rest the fixed settings.
        self._tracker = open_parent_run(uri, experiment, name=f"multirun-{sweep_dir.name}", tags=tags,
                                        params=swept_overrides(overrides))
        self.parent_run_id = self._tracker.run_id
        self._experiment = experiment
        self._metric = config.get("optimized_metric", "val/ppl")
        os.environ[ENV_PARENT_RUN] = self.parent_run_id
        os.environ[ENV_SWEEP] = self.sweep_name

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if self.parent_run_id is None:
            return
        for key, value in ((ENV_PARENT_RUN, self.parent_run_id), (ENV_SWEEP, self.sweep_name or "")):
            self._saved_env.setdefault(key, os.environ.get(key))
            os.environ[key] = value

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if self.parent_run_id is None or self._tracker is not None:
            return  # in the sweeping process the variables stay for the next job; on_multirun_end clears them
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env.clear()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self._tracker is None:
            return
        for key in (ENV_PARENT_RUN, ENV_SWEEP):
            os.environ.pop(key, None)
        try:
            summarize_children(self._tracker, self._experiment, self._metric)
            self._tracker.end("FINISHED")
            say_multirun_closing(self._tracker.uri, self._experiment, self._tracker.run_id)
        finally:
            self._tracker = None
            self.parent_run_id = None

    def __getstate__(self) -> dict[str, Any]:
        # Jobs in other processes need the parent id, not the open tracker (a client and a lock).
        state = dict(self.__dict__)
        state["_tracker"] = None
        state["_saved_env"] = {}
        return state
