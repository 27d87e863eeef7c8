"""Experiment tracking. `base` is plain Python (the trainer's side); MLflow lives in `mlflow_tracker`."""

from kbk.tracking.base import NullTracker, Tracker

__all__ = ["NullTracker", "Tracker"]
