"""A fresh run's MLflow start off the critical path: training starts at once while a thread makes the run.

Importing MLflow and opening its store take ~2 s of a short trial's start-up (MLflow pulls pandas, SQLAlchemy,
alembic), and importing them beside the build is no faster (both hold the GIL). Training mostly runs in torch, which
lets go of the GIL, so the start runs on a thread while the first steps train. `PendingTracker` stands for the
`MlflowTracker` that thread makes:

- metrics logged before the run exists are kept, with the time they were logged, and written to it once it does;
- anything else asked of the tracker (the flush after a checkpoint, the artifacts, the end, `defer_signals`) waits
  for the start. A start that failed raises its error there, or at the first `log_metrics` after it failed: the
  job ends with the same one-line `TrackingError` as a synchronous start, never trains on untracked;
- SIGTERM/SIGINT before the run exists stop the job as the run's own handlers would (`SignalGuard`); leaving the
  `with` then waits for the start and ends the run KILLED. Once the run exists, the guard is the run's.

The checks that a user's mistake can fail (`store.check_store`, a parent run) are made before, synchronously;
`kbk.run.start_tracking` decides what starts here (fresh runs) and what does not (resumed runs).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kbk.tracking.mlflow_tracker import SignalGuard
from kbk.urls import redact_url

if TYPE_CHECKING:
    from kbk.tracking.mlflow_tracker import MlflowTracker


class PendingTracker:
    """The `MlflowTracker` that `start()` makes on a thread of its own, for a job to train with meanwhile.
    `uri` and `run_name` are the run's store and name (known before it exists); `on_failed_start` runs (in the job's
    thread) when the start failed, e.g. to remove the run folder of a run that never existed."""

    def __init__(self, start: Callable[[], MlflowTracker], *, uri: str, run_name: str,
                 on_failed_start: Callable[[], None] | None = None) -> None:
        self.uri = uri
        self.run_name = run_name
        self._on_failed_start = on_failed_start
        self._made: MlflowTracker | None = None  # set by the thread
        self._error: BaseException | None = None  # set by the thread
        self._tracker: MlflowTracker | None = None  # the run, once handed over in the job's thread
        self._early_metrics: list[tuple[dict[str, float], int, int]] = []  # (metrics, step, timestamp ms)
        self._stop_reason: str | None = None  # a signal arrived before the run existed
        # What `SignalGuard` reads of the tracker it guards.
        self._signal_guard: SignalGuard | None = None
        self._deferring_signals = False
        self._owner_pid = os.getpid()
        self._done = threading.Event()  # set when the start has made the run or failed
        # Not a daemon: a job that exits without leaving the `with` still waits for the run, which exit then ends.
        threading.Thread(target=self._start, args=(start,), name="kbk-mlflow-start").start()

    def _start(self, start: Callable[[], MlflowTracker]) -> None:
        try:
            self._made = start()
        except BaseException as e:  # noqa: BLE001 (raised in the job's thread, where it can be acted on)
            self._error = e
        finally:
            self._done.set()

    @property
    def starting(self) -> bool:
        """True until the run has been handed over (or its start has failed)."""
        return self._tracker is None and self._error is None

    @property
    def run_id(self) -> str | None:
        """The MLflow run id once the run has been handed over; None before."""
        return self._tracker.run_id if self._tracker is not None else None

    def _started(self, wait: bool = True) -> MlflowTracker | None:
        """The run, waiting for its start with `wait` (else None while it is under way); the start's error if it
        failed. The first call that finds the start done hands the run over."""
        if self._tracker is None:
            if not wait and not self._done.is_set():
                return None
            self._wait()
            if self._error is not None:
                raise self._error
            self._hand_over(self._made)
        return self._tracker

    def _wait(self) -> None:
        """Wait for the start in short waits: a signal the OS hands to another thread is only acted on when the main
        thread wakes (its handler then raises through here). Not `Thread.join`: interrupted by a signal, Python 3.11
        takes the thread for stopped when it is not."""
        while not self._done.wait(0.1):
            pass

    def _hand_over(self, tracker: MlflowTracker) -> None:
        from kbk import console

        self._tracker = tracker
        if self._signal_guard is not None:
            self._signal_guard.hand_over(tracker)
        for metrics, step, timestamp_ms in self._early_metrics:
            tracker.log_metrics(metrics, step, timestamp_ms=timestamp_ms)
        self._early_metrics = []
        console.say(f"MLflow run {tracker.run_id} created in {redact_url(self.uri)} while training (run "
                    f"'{tracker.run_name}')")

    # ------------------------------------------------------------------------------------------ the Tracker

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        tracker = self._started(wait=False)
        if tracker is None:
            self._early_metrics.append((dict(metrics), int(step), int(time.time() * 1000)))
        else:
            tracker.log_metrics(metrics, step)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._started().log_params(params)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._started().log_artifact(path, artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._started().set_tags(tags)

    def flush(self) -> None:
        self._started().flush()

    def __getattr__(self, name: str) -> Any:
        """Everything else (`log_text`, `log_dict`, `defer_signals`, `deferred_signal`, `end`, ...) is the run's, once
        it exists."""
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._started(), name)

    # ----------------------------------------------------------------------------------- signals and the end

    def install_signal_handlers(self, signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)) -> SignalGuard:
        """`MlflowTracker.install_signal_handlers`, for the run to be: a signal before it exists stops the job (the
        `with` then ends the run KILLED). Main thread only."""
        tracker = self._started(wait=False)
        if tracker is not None:
            return tracker.install_signal_handlers(signals)
        if self._signal_guard is None:
            self._signal_guard = SignalGuard(self, signals)
        return self._signal_guard

    def _end_from_signal(self, reason: str) -> None:
        """Called by the guard before it raises: the run cannot be ended before it exists, so `__exit__` does it."""
        self._stop_reason = reason

    def __enter__(self) -> PendingTracker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if self._stop_reason is not None and not self._done.is_set():
            from kbk import console

            console.say(f"{self._stop_reason} while its MLflow run was being created: ending the run KILLED once "
                        f"it exists")
        self._wait()
        if self._error is not None:
            if self._signal_guard is not None:
                self._signal_guard.restore()
            if self._on_failed_start is not None:
                self._on_failed_start()
            if exc is None:
                raise self._error
            return  # the job's own exception goes on
        if self._tracker is None:
            self._hand_over(self._made)
        if self._stop_reason is not None and isinstance(exc, (SystemExit, KeyboardInterrupt)):
            try:  # as the run's own handler would have, had it existed when the signal came
                self._tracker.end("KILLED", reason=self._stop_reason)
            except Exception:  # noqa: BLE001 (the signal's exception is already on its way)
                pass
            return
        self._tracker.__exit__(exc_type, exc, tb)

    def __repr__(self) -> str:
        state = "starting" if self.starting else ("failed" if self._error is not None else f"run {self.run_id}")
        return f"PendingTracker({redact_url(self.uri)!r}, {state})"
