"""`MlflowTracker`: an MLflow run from its start to its end. What it writes meanwhile is `MlflowWriter`'s; reopening
a run to resume it is `resume.reopen_run`'s.

- `MlflowTracker.start(...)` creates a run, always named explicitly (MLflow's name generator uses `random`, so
  seeded runs would share a name), nested under a parent run through the `mlflow.parentRunId` tag.
- `end("FINISHED" | "FAILED" | "KILLED", reason)` flushes and ends it, with the reason in the tag `kbk.end_reason`.
  As a context manager an exception ends the run FAILED (KILLED for KeyboardInterrupt, a non-zero SystemExit, or
  Optuna's `TrialPruned`, which also labels it pruned).
- `install_signal_handlers()` ends the run KILLED on SIGTERM/SIGINT (SLURM time-outs, scancel, Ctrl-C) and then
  raises `SystemExit(143)` / `KeyboardInterrupt`; `defer_signals()` only records them while the finished run
  stores its artifacts.
- A run still open when the interpreter exits is ended FAILED, and `end_orphan_run` ends the run a killed process
  left RUNNING: no run stays RUNNING forever after a crash.
- `monitor_system(interval_s)` samples CPU, memory, disk, network (and GPU) into the run's `system/*` metrics
  through MLflow's `SystemMetricsMonitor`, until the run ends however it ends.
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
import weakref
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from kbk.errors import TrackingError
from kbk.tracking.mlflow_writer import MAX_TAG_VALUE_LENGTH, MlflowWriter, describe
from kbk.urls import redact_url

if TYPE_CHECKING:
    from mlflow import MlflowClient

END_REASON_TAG = "kbk.end_reason"
#: How the run ended, finer than MLflow's status: `pruned` runs end KILLED like a stopped run, but are not crashes.
OUTCOME_TAG = "kbk.outcome"
PARENT_RUN_TAG = "mlflow.parentRunId"
END_STATUSES = ("FINISHED", "FAILED", "KILLED")

# Runs this process opened and has not ended: ended FAILED at interpreter exit (see `_end_open_runs`).
_open_trackers: weakref.WeakSet[MlflowTracker] = weakref.WeakSet()
_atexit_registered = False


def _end_open_runs() -> None:
    for tracker in list(_open_trackers):
        if tracker._owner_pid == os.getpid():
            try:
                tracker.end("FAILED", reason="the process exited without ending the run")
            except Exception:  # noqa: BLE001 (nothing left to report to at exit)
                pass


class SignalGuard:
    """Handlers installed by `MlflowTracker.install_signal_handlers` (or by a `PendingTracker`'s, until its run exists
    and it hands the guard over); `restore()` (or leaving the `with`) puts the previous ones back."""

    def __init__(self, tracker: MlflowTracker, signals: Iterable[int]) -> None:
        self._tracker = tracker
        self._previous: dict[int, Any] = {}
        for signum in signals:
            self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        tracker = self._tracker
        if tracker._deferring_signals and tracker._owner_pid == os.getpid():
            tracker.deferred_signal = signum  # acted on by the caller once the run has ended
            return
        # Read first: ending the run restores (and forgets) the previous handlers.
        previous = self._previous.get(signum)
        if tracker._owner_pid == os.getpid():  # a forked child must not end its parent's run
            tracker._end_from_signal(f"stopped by {signal.Signals(signum).name}")
        if callable(previous) and previous is not signal.default_int_handler:
            previous(signum, frame)  # another tracker (a parent run in this process) ends its run too
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    def hand_over(self, tracker: MlflowTracker) -> None:
        """Guard `tracker`'s run from now on: the run a `PendingTracker` guarded until it existed."""
        self._tracker = tracker
        tracker._signal_guard = self

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            try:
                if signal.getsignal(signum) == self._handle:
                    signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
            except ValueError:  # not the main thread any more; nothing to restore from here
                pass
        self._previous.clear()
        if self._tracker._signal_guard is self:
            self._tracker._signal_guard = None

    def __enter__(self) -> SignalGuard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


class SystemMetrics:
    """MLflow's `SystemMetricsMonitor` on run `run_id`, built and started on a thread of its own: building it probes
    the GPU library and reads the store, which a run's start must not wait for. `stop()` ends the sampling and
    writes what was sampled; a monitor that is still being built when `stop()` comes is never started."""

    def __init__(self, run_id: str, uri: str, interval_s: float, resumed: bool) -> None:
        self._lock = threading.Lock()
        self._stopped = False
        self._monitor: Any = None
        self._starter = threading.Thread(target=self._start, args=(run_id, uri, interval_s, resumed), daemon=True,
                                         name="kbk-system-metrics-start")
        self._starter.start()

    def _start(self, run_id: str, uri: str, interval_s: float, resumed: bool) -> None:
        import logging

        from kbk import console

        # Its INFO lines ("Started monitoring system metrics.") would land in every run's console between kbk's own.
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            # resume_logging: a resumed run's samples continue after the steps it already holds
            monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, resume_logging=resumed,
                                           tracking_uri=uri)
        except Exception as e:  # noqa: BLE001 (a missing psutil must not stop training)
            console.say(f"system metrics off ({describe(e)}): pip install psutil, or set tracking.system_metrics=false")
            return
        with self._lock:
            if not self._stopped:
                monitor.start()
                self._monitor = monitor

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            monitor, self._monitor = self._monitor, None
        if monitor is not None:
            monitor.finish()


class MlflowTracker(MlflowWriter):
    """One MLflow run behind the `Tracker` protocol, from `start` (or `resume.reopen_run`) to `end`."""

    def __init__(
        self,
        client: MlflowClient,
        run_id: str,
        *,
        experiment_id: str | None = None,
        run_name: str | None = None,
        **writer_options: Any,
    ) -> None:
        global _atexit_registered
        super().__init__(client, run_id, **writer_options)
        self.experiment_id = experiment_id
        self.run_name = run_name
        self._kill_after_call: str | None = None
        self._signal_guard: SignalGuard | None = None
        self._deferring_signals = False
        self.deferred_signal: int | None = None
        self._owner_pid = os.getpid()
        self._system_metrics: SystemMetrics | None = None
        _open_trackers.add(self)
        if not _atexit_registered:
            atexit.register(_end_open_runs)
            _atexit_registered = True

    # ------------------------------------------------------------------------------------------------ start

    @classmethod
    def start(
        cls,
        uri: str,
        experiment: str,
        run_name: str | None = None,
        tags: Mapping[str, Any] | None = None,
        parent_run_id: str | None = None,
        *,
        flush_interval_s: float | None = 30.0,
        max_buffered: int = 10_000,
    ) -> MlflowTracker:
        """Create a run named `run_name` in `experiment` (created if missing). `uri` should come from
        `store.resolve_tracking_uri`. `parent_run_id` nests the run under a parent (which may live in another
        process, or be FINISHED)."""
        from mlflow.exceptions import MlflowException

        from kbk.tracking.store import experiment_id, prepared_store

        if run_name is None or not str(run_name).strip():
            raise ValueError(
                "MlflowTracker.start needs an explicit run_name: MLflow's generated names come from "
                "`random`, so seeded runs would all get the same one."
            )
        with prepared_store(uri) as client:
            exp_id = experiment_id(client, uri, experiment, create=True)
        tag_values = {str(k): str(v) for k, v in (tags or {}).items()}
        try:
            if parent_run_id is not None:
                check_parent(client, uri, parent_run_id)
                tag_values[PARENT_RUN_TAG] = parent_run_id
            run = client.create_run(exp_id, tags=tag_values, run_name=str(run_name))
        except MlflowException as e:
            raise store_error(uri, "create", e) from e
        return cls(client, run.info.run_id, uri=uri, flush_interval_s=flush_interval_s, max_buffered=max_buffered,
                   experiment_id=exp_id, run_name=run.info.run_name)

    def monitor_system(self, interval_s: float = 10.0, resumed: bool = False) -> None:
        """Sample the machine every `interval_s` seconds into `system/*` metrics (`system/cpu_utilization_percentage`,
        `system/system_memory_usage_megabytes`, `system/gpu_0_utilization_percentage`, ...) until the run ends;
        `resumed`: the run already holds samples, so the new ones continue their steps. Returns at once."""
        if self._system_metrics is None and not self._ended:
            self._system_metrics = SystemMetrics(self.run_id, self.uri, interval_s, resumed)

    def _stop_system_metrics(self) -> None:
        if self._system_metrics is not None:
            monitor, self._system_metrics = self._system_metrics, None
            monitor.stop()

    # -------------------------------------------------------------------------------------------------- end

    def mark_pruned(self) -> None:
        """Tag the run `kbk.outcome=pruned` and name it `<name> (pruned)`: in the MLflow UI a pruned trial (status
        KILLED, as MLflow has no other) then reads apart from a crashed or stopped one."""
        try:
            name = self.client.get_run(self.run_id).info.run_name or ""
            tags = {OUTCOME_TAG: "pruned"}
            if not name.endswith("(pruned)"):
                tags["mlflow.runName"] = f"{name} (pruned)".strip()
            for key, value in tags.items():
                self._store("tag the pruned run", self.client.set_tag, self.run_id, key, value)
        except TrackingError:
            pass  # a label only: the run still ends KILLED with its reason

    def end(self, status: str = "FINISHED", reason: str | None = None) -> None:
        """Flush, then mark the run `status` (FINISHED, FAILED or KILLED); `reason` goes to the tag
        `kbk.end_reason`. A second call does nothing. Restores signal handlers this tracker installed."""
        status = str(status).upper()
        if status not in END_STATUSES:
            raise ValueError(f"status must be one of {END_STATUSES}, not {status!r}")
        if self._ended:
            return
        self._stop_system_metrics()  # its last samples land while the run is still RUNNING
        flush_error: TrackingError | None = None
        try:
            self.flush()
        except TrackingError as e:  # still mark the run ended: a RUNNING run forever is worse
            flush_error = e
            if status == "FINISHED":
                status, reason = "FAILED", f"metrics could not be written: {e}"
        try:
            if reason:
                self._store("tag the end reason", self.client.set_tag, self.run_id, END_REASON_TAG,
                            str(reason)[:MAX_TAG_VALUE_LENGTH])
            self._store("end the run", self.client.set_terminated, self.run_id, status)
        finally:
            self._let_go()
        if flush_error is not None:
            raise flush_error

    def detach(self) -> None:
        """Flush and let go of the run without ending it (another process will end it): no signal handling, no
        FAILED at exit."""
        self._stop_system_metrics()
        self.flush()
        self._let_go()

    def _let_go(self) -> None:
        self._ended = True
        _open_trackers.discard(self)
        if self._signal_guard is not None:
            self._signal_guard.restore()

    def __enter__(self) -> MlflowTracker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            self.end("FINISHED")
        elif isinstance(exc, KeyboardInterrupt):
            self.end("KILLED", reason="interrupted (KeyboardInterrupt)")
        elif isinstance(exc, SystemExit):
            code = exc.code
            if code in (None, 0):
                self.end("FINISHED")
            else:
                self.end("KILLED", reason=f"SystemExit({code})")
        elif type(exc).__name__ == "TrialPruned":
            self.mark_pruned()
            self.end("KILLED", reason=f"pruned: {exc}" if str(exc) else "pruned")
        else:
            try:
                self.end("FAILED", reason=describe(exc))
            except TrackingError:
                pass  # keep the original exception

    # ---------------------------------------------------------------------------------------------- signals

    def install_signal_handlers(
        self, signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)
    ) -> SignalGuard:
        """On SIGTERM/SIGINT: end the run KILLED (after flushing), then raise `SystemExit(128 + signum)` (143
        for SIGTERM) or `KeyboardInterrupt`. Returns a guard: `restore()` it, use it as a context manager, or
        let `end()` restore the previous handlers. Main thread only (Python's rule for signal handlers)."""
        if self._signal_guard is not None:
            return self._signal_guard
        if threading.current_thread() is not threading.main_thread():
            raise TrackingError(
                "Signal handlers can only be installed from the main thread. Fix: call "
                "install_signal_handlers() in the main thread, or end the run from the thread's own error "
                "handling."
            )
        self._signal_guard = SignalGuard(self, signals)
        return self._signal_guard

    def defer_signals(self) -> None:
        """From now until the run ends, SIGTERM/SIGINT are only recorded (`deferred_signal`): for the work after
        training (artifacts, the end), which a stop would cut short for nothing and, inside a store call, with a
        traceback. The caller acts on `deferred_signal` once the run has ended."""
        self._deferring_signals = True

    def _end_from_signal(self, reason: str) -> None:
        if self._ended:
            return
        if self._store_calls:
            # The signal interrupted a store call (a SQLite transaction may be open): ending now could wait on
            # our own lock. The exception raised next unwinds that call; `_store_calls_done` ends the run then.
            self._kill_after_call = reason
            return
        try:
            self.end("KILLED", reason=reason)
        except Exception:  # noqa: BLE001 (a signal handler must still stop the process)
            pass

    def _store_calls_done(self) -> None:
        if self._kill_after_call is not None:
            reason, self._kill_after_call = self._kill_after_call, None
            try:
                self.end("KILLED", reason=reason)
            except Exception:  # noqa: BLE001 (the signal's exception is already on its way)
                pass

    def __repr__(self) -> str:
        state = "ended" if self._ended else "open"
        return f"MlflowTracker(run_id={self.run_id!r}, uri={redact_url(self.uri)!r}, {state})"


def check_parent(client: MlflowClient, uri: str, parent_run_id: str) -> None:
    """A `TrackingError` unless parent run `parent_run_id` is in the store."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_run(parent_run_id)
    except MlflowException as e:
        raise TrackingError(
            f"Parent run {parent_run_id} is not in {redact_url(uri)} ({describe(e)}). Fix: create the parent run "
            "in the same store first, or drop parent_run_id."
        ) from e


def store_error(uri: str, action: str, error: Exception) -> TrackingError:
    return TrackingError(
        f"MLflow store {redact_url(uri)}: could not {action} the run ({describe(error)}). Fix: check that "
        "tracking.uri points at a usable store, or use tracking=none."
    )


def end_orphan_run(uri: str, run_id: str) -> None:
    """End run `run_id` KILLED if it is still RUNNING: its process was killed (before its first checkpoint, or the
    new run does not resume it), and nothing else would ever end it."""
    from mlflow import MlflowClient

    from kbk import console

    client = MlflowClient(uri)
    try:
        if client.get_run(run_id).info.status != "RUNNING":
            return
    except Exception:  # noqa: BLE001 (not in this store: tracking.uri changed since)
        return
    client.set_tag(run_id, END_REASON_TAG, "its process was killed; a later run of the same config did not resume it")
    client.set_terminated(run_id, "KILLED")
    console.say(f"MLflow run {run_id} of this config was left RUNNING by a killed process: ended KILLED")
