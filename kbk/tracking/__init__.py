"""Experiment tracking, at the edge of kbk: training code sees only `base` (the `Tracker` it logs to).

- `base`: the `Tracker` protocol and `NullTracker` (plain Python).
- `mlflow_writer`: `MlflowWriter` writes a run's params, metrics, tags and artifacts.
- `mlflow_tracker`: `MlflowTracker`, a writer with a lifecycle: start, end, signals, exit, orphan runs.
- `background_start`: `PendingTracker`, a new run's start on a thread of its own while training begins.
- `resume`: a checkpoint found, its MLflow run reopened, its metric history caught up.
- `run_params`, `run_tags`: what a job's run records: its config (flattened, hashed, secrets redacted), its tags
  and name.
- `store`: where runs go (`tracking.uri`), and preparing a store.
- `plots`: the training-curves plot.

MLflow, matplotlib and OmegaConf are imported only inside the functions that use them.
"""

from kbk.tracking.base import NullTracker, Tracker

__all__ = ["NullTracker", "Tracker"]
