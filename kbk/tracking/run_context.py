"""What a run's MLflow page shows besides its own metrics: the machine's load while it trains (MLflow's system
metrics) and the data it reads (dataset inputs). Nothing with tracking=none."""

from __future__ import annotations

from typing import Any

from kbk.tracking.dataset_input import log_dataset_inputs


def log_run_context(tracker: Any, settings: Any, data: Any, resumed: bool) -> None:
    """Log `data` as the run's inputs and, with `tracking.system_metrics`, start sampling the machine (on a thread
    of its own; the run's end stops it). `resumed`: the run continues an earlier process's samples."""
    if getattr(tracker, "run_id", None) is None:
        return
    log_dataset_inputs(tracker, settings, data)
    if settings.tracking.system_metrics:
        tracker.monitor_system(settings.tracking.system_metrics_interval_s, resumed=resumed)
