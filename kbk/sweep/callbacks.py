"""A parent MLflow run for plain Hydra multiruns (`python -m kbk.run -m koopman.dim=128,256`, Hydra's basic
sweeper), registered in `conf/config.yaml` under `hydra.callbacks`.

`on_multirun_start` (in the process that sweeps) creates the parent run, with the store's schema and experiment,
before any job starts, and exports `KBK_PARENT_RUN_ID` / `KBK_SWEEP` so in-process jobs inherit them.
`on_job_start` sets them again in whatever process runs the job: a reused joblib worker (spawned before this
multirun, so its environment is older) or a submitit job gets this callback with the parent id inside (Hydra
pickles the callbacks with the job). `on_job_end` puts the job's environment back; `on_multirun_end` ends the
parent FINISHED. If the multirun dies first, the tracker's exit hook ends it FAILED.

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

log = logging.getLogger(__name__)


def _uses_kbk_sweeper(config: DictConfig) -> bool:
    target = str(config.hydra.sweeper.get("_target_", "")) if config.get("hydra") else ""
    return "kbk_sweeper" in target or target.startswith("kbk.")


class MultirunParent(Callback):
    def __init__(self) -> None:
        self.parent_run_id: str | None = None
        self.sweep_name: str | None = None
        self._tracker: Any = None
        self._saved_env: dict[str, str | None] = {}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if _uses_kbk_sweeper(config):
            return
        tracking = config.get("tracking")
        if tracking is None or tracking.get("backend", "mlflow") == "none":
            return
        from pathlib import Path

        from kbk.paths import outputs_dir
        from kbk.tracking.mlflow_tracker import MlflowTracker
        from kbk.tracking.store import ensure_experiment, resolve_tracking_uri

        uri = resolve_tracking_uri(tracking.get("uri"), outputs_dir(config.paths.outputs))
        experiment = tracking.get("experiment", "kbk")
        sweep_dir = Path(str(config.hydra.sweep.dir))
        self.sweep_name = f"{config.get('name', 'kbk')}/{sweep_dir.name}"
        ensure_experiment(uri, experiment)
        overrides = [str(o) for o in config.hydra.overrides.task]
        self._tracker = MlflowTracker.start(
            uri, experiment, run_name=f"multirun-{sweep_dir.name}", flush_interval_s=None,
            tags={"kbk.role": "sweep", "kbk.sweep": self.sweep_name, "kbk.sweep_dir": str(sweep_dir),
                  "kbk.overrides": " ".join(overrides)[:8000]},
        )
        self.parent_run_id = self._tracker.run_id
        os.environ[ENV_PARENT_RUN] = self.parent_run_id
        os.environ[ENV_SWEEP] = self.sweep_name
        log.info("multirun parent run %s in %s", self.parent_run_id, uri)

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
            self._tracker.end("FINISHED")
        finally:
            self._tracker = None
            self.parent_run_id = None

    def __getstate__(self) -> dict[str, Any]:
        # Jobs in other processes need the parent id, not the open tracker (a client and a lock).
        state = dict(self.__dict__)
        state["_tracker"] = None
        state["_saved_env"] = {}
        return state
