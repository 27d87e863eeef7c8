"""`MlflowTracker`: the trainer's `Tracker` interface written to an MLflow run.

Built on `MlflowClient` only, never on MLflow's fluent API (`mlflow.start_run`, `mlflow.log_metric`), which
keeps one global "active run" per process: with the client, a sweep's parent run and a trial's run can be open
in the same process, and a child run made in another process is nested through the `mlflow.parentRunId` tag.

Decisions (the traps are in docs/sweeps.md, "MLflow"):

- Metrics are buffered and written with `log_batch` (at most 1,000 per call) on `flush()`, on `end()`, when
  the buffer holds `max_buffered` values, and at the first `log_metrics` after `flush_interval_s` (so a live
  run shows progress). No call to the store per number.
- Non-finite values are logged, not skipped: MLflow stores NaN as NaN, and its SQL stores clamp ±inf to
  ±1.797e308 (the largest float). A diverging run is then visible in its curves.
- Params are immutable: the same value again is a no-op (resume re-logs the config), another value raises
  `TrackingError` naming the keys, before anything is written. A value longer than MLflow's 6,000 characters
  (which MLflow would cut with only a warning) is written in full to the artifact `params_long.json`; the
  param holds a short marker with its length and hash, so a changed long value is still caught.
- Runs are always named explicitly (MLflow's name generator uses `random`, so seeded runs would share a name).
- Status: `end("FINISHED" | "FAILED" | "KILLED", reason)`; as a context manager an exception ends the run
  FAILED (KILLED for KeyboardInterrupt, a non-zero SystemExit, or Optuna's `TrialPruned`), with the reason in
  the tag `kbk.end_reason`. `install_signal_handlers()` ends the run KILLED on SIGTERM/SIGINT (SLURM
  time-outs, scancel, Ctrl-C) and then raises `SystemExit(143)` / `KeyboardInterrupt`. A run still open when
  the interpreter exits is ended FAILED, so no run stays RUNNING forever after a crash.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import posixpath
import re
import signal
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kbk.errors import TrackingError
from kbk.tracking.run_info import flatten
from kbk.tracking.store import redact_url

if TYPE_CHECKING:
    from mlflow import MlflowClient

#: MLflow's limits (mlflow.utils.validation), kept here so that importing this module does not import MLflow.
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
MAX_KEY_LENGTH = 250
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100

LONG_PARAMS_ARTIFACT = "params_long.json"
END_REASON_TAG = "kbk.end_reason"
#: How the run ended, finer than MLflow's status: `pruned` runs end KILLED like a stopped run, but are not crashes.
OUTCOME_TAG = "kbk.outcome"
RESUMES_TAG = "kbk.resumes"
PARENT_RUN_TAG = "mlflow.parentRunId"
END_STATUSES = ("FINISHED", "FAILED", "KILLED")

_KEY_RE = re.compile(r"^[/\w.\- :]+$")

ReportHook = Callable[[float, int], None]


def _check_key(key: str, kind: str) -> str:
    key = str(key)
    norm = posixpath.normpath(key) if key else ""
    if (
        not key
        or len(key) > MAX_KEY_LENGTH
        or not _KEY_RE.match(key)
        or norm != key
        or norm == "."
        or norm.startswith(("..", "/"))
    ):
        raise TrackingError(
            f"Invalid {kind} name {key!r}: MLflow accepts up to {MAX_KEY_LENGTH} letters, digits, '_', '-', "
            "'.', ' ', ':' and '/', with no empty, '.' or '..' path parts. Fix: rename the key."
        )
    return key


def _long_marker(value: str) -> str:
    digest = hashlib.sha256(value.encode("utf-8")).hexdigest()[:16]
    return f"<{len(value)} chars, sha256 {digest}; full value in {LONG_PARAMS_ARTIFACT}>"


def _chunks(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _describe(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


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
    """Handlers installed by `MlflowTracker.install_signal_handlers`; `restore()` (or leaving the `with`) puts
    the previous ones back."""

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


class MlflowTracker:
    """One MLflow run behind the `Tracker` protocol. Make one with `MlflowTracker.start(...)`.

    `report_hook(value, step)` is called by `report` (the sweeper plugs Optuna's `report`/`should_prune` in;
    it may raise `optuna.TrialPruned`); without one, `report` does nothing.
    """

    def __init__(
        self,
        client: MlflowClient,
        run_id: str,
        *,
        uri: str | None = None,
        report_hook: ReportHook | None = None,
        flush_interval_s: float | None = 30.0,
        max_buffered: int = 10_000,
        known_params: Mapping[str, str] | None = None,
        experiment_id: str | None = None,
        run_name: str | None = None,
    ) -> None:
        global _atexit_registered
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.run_name = run_name
        self.uri = uri if uri is not None else client.tracking_uri
        self.report_hook = report_hook
        self.flush_interval_s = flush_interval_s
        self.max_buffered = max(1, int(max_buffered))
        self._params: dict[str, str] = dict(known_params or {})
        self._long_params: dict[str, str] | None = None  # loaded lazily from the artifact on a resumed run
        self._buffer: list[tuple[str, float, int, int]] = []  # (key, value, timestamp ms, step)
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()
        self._valid_metric_keys: set[str] = set()
        self._ended = False
        self._store_calls = 0  # > 0 while a store call runs (a signal handler must not start another then)
        self._kill_after_call: str | None = None
        self._signal_guard: SignalGuard | None = None
        self._deferring_signals = False
        self.deferred_signal: int | None = None
        self._owner_pid = os.getpid()
        _open_trackers.add(self)
        if not _atexit_registered:
            atexit.register(_end_open_runs)
            _atexit_registered = True

    # ---------------------------------------------------------------------------------------------- lifecycle

    @classmethod
    def start(
        cls,
        uri: str,
        experiment: str,
        run_name: str | None = None,
        tags: Mapping[str, Any] | None = None,
        parent_run_id: str | None = None,
        run_id: str | None = None,
        *,
        report_hook: ReportHook | None = None,
        flush_interval_s: float | None = 30.0,
        max_buffered: int = 10_000,
    ) -> MlflowTracker:
        """Create a run named `run_name` in `experiment` (created if missing), or with `run_id` reopen that
        run (status back to RUNNING) to resume it.

        `uri` should come from `store.resolve_tracking_uri`. `parent_run_id` nests the run under a parent
        (which may live in another process, or be FINISHED). On resume, the stored name and parent are kept: a
        different `parent_run_id` or an experiment that does not hold the run raises `TrackingError`.
        """
        from mlflow.exceptions import MlflowException

        from kbk.tracking.store import experiment_id as get_experiment_id
        from kbk.tracking.store import prepared_store

        if run_id is None and (run_name is None or not str(run_name).strip()):
            raise ValueError(
                "MlflowTracker.start needs an explicit run_name: MLflow's generated names come from "
                "`random`, so seeded runs would all get the same one."
            )
        with prepared_store(uri) as client:
            exp_id = get_experiment_id(client, uri, experiment, create=run_id is None)
        tag_values = {str(k): str(v) for k, v in (tags or {}).items()}
        try:
            if parent_run_id is not None:
                try:
                    client.get_run(parent_run_id)
                except MlflowException as e:
                    raise TrackingError(
                        f"Parent run {parent_run_id} is not in {redact_url(uri)} ({_describe(e)}). Fix: create the "
                        "parent run in the same store first, or drop parent_run_id."
                    ) from e
            if run_id is None:
                if parent_run_id is not None:
                    tag_values[PARENT_RUN_TAG] = parent_run_id
                run = client.create_run(exp_id, tags=tag_values, run_name=str(run_name))
                known: dict[str, str] = {}
            else:
                try:
                    run = client.get_run(run_id)
                except MlflowException as e:
                    raise TrackingError(
                        f"Cannot resume MLflow run {run_id}: it is not in {redact_url(uri)} ({_describe(e)}). Fix: "
                        "check tracking.uri (the store the run was made in), or start a new run instead of "
                        "resuming."
                    ) from e
                if run.info.experiment_id != exp_id:
                    raise TrackingError(
                        f"Cannot resume MLflow run {run_id}: it belongs to experiment id "
                        f"{run.info.experiment_id}, not {experiment!r} (id {exp_id}). Fix: resume with the "
                        "experiment the run was made in."
                    )
                if run.info.lifecycle_stage != "active":
                    raise TrackingError(
                        f"Cannot resume MLflow run {run_id}: it is deleted. Fix: restore it "
                        "(`mlflow runs restore --run-id ...`) or start a new run."
                    )
                stored_parent = run.data.tags.get(PARENT_RUN_TAG)
                if parent_run_id is not None and stored_parent != parent_run_id:
                    raise TrackingError(
                        f"Cannot resume MLflow run {run_id} under parent {parent_run_id}: its parent is "
                        f"{stored_parent}. Fix: resume it with its own parent (or none)."
                    )
                client.update_run(run_id, status="RUNNING")
                if END_REASON_TAG in run.data.tags:  # the reason it stopped last time no longer holds
                    client.delete_tag(run_id, END_REASON_TAG)
                resumes = int(run.data.tags.get(RESUMES_TAG, "0") or 0) + 1
                tag_values = {**tag_values, RESUMES_TAG: str(resumes)}
                known = dict(run.data.params)
        except MlflowException as e:
            raise TrackingError(
                f"MLflow store {redact_url(uri)}: could not {'create' if run_id is None else 'reopen'} the run "
                f"({_describe(e)}). Fix: check that tracking.uri points at a usable store, or use "
                "tracking=none."
            ) from e
        tracker = cls(
            client,
            run.info.run_id,
            uri=uri,
            report_hook=report_hook,
            flush_interval_s=flush_interval_s,
            max_buffered=max_buffered,
            known_params=known,
            experiment_id=exp_id,
            run_name=run.info.run_name,
        )
        if run_id is not None:
            tracker.set_tags(tag_values)
        return tracker

    @property
    def ended(self) -> bool:
        """True once `end()` (or `detach()`) was called: this tracker logs no more."""
        return self._ended

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
        flush_error: TrackingError | None = None
        try:
            self.flush()
        except TrackingError as e:  # still mark the run ended: a RUNNING run forever is worse
            flush_error = e
            if status == "FINISHED":
                status, reason = "FAILED", f"metrics could not be written: {e}"
        try:
            if reason:
                self._store(
                    "tag the end reason",
                    self.client.set_tag,
                    self.run_id,
                    END_REASON_TAG,
                    str(reason)[:MAX_TAG_VALUE_LENGTH],
                )
            self._store("end the run", self.client.set_terminated, self.run_id, status)
        finally:
            self._ended = True
            _open_trackers.discard(self)
            if self._signal_guard is not None:
                self._signal_guard.restore()
        if flush_error is not None:
            raise flush_error

    def detach(self) -> None:
        """Flush and let go of the run without ending it (another process will end it): no signal handling, no
        FAILED at exit."""
        self.flush()
        _open_trackers.discard(self)
        if self._signal_guard is not None:
            self._signal_guard.restore()
        self._ended = True

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
                self.end("FAILED", reason=_describe(exc))
            except TrackingError:
                pass  # keep the original exception

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
            # our own lock. The exception raised next unwinds that call; `_store` ends the run once it has.
            self._kill_after_call = reason
            return
        try:
            self.end("KILLED", reason=reason)
        except Exception:  # noqa: BLE001 (a signal handler must still stop the process)
            pass

    # ------------------------------------------------------------------------------------------- store calls

    @contextlib.contextmanager
    def _storing(self) -> Iterator[None]:
        """Marks store work in progress; a signal that arrived meanwhile ends the run once the work has
        unwound."""
        self._store_calls += 1
        try:
            yield
        finally:
            self._store_calls -= 1
            if self._store_calls == 0 and self._kill_after_call is not None:
                reason, self._kill_after_call = self._kill_after_call, None
                try:
                    self.end("KILLED", reason=reason)
                except Exception:  # noqa: BLE001 (the signal's exception is already on its way)
                    pass

    def _store(self, action: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with self._storing():
            try:
                return fn(*args, **kwargs)
            except TrackingError:
                raise
            except Exception as e:
                raise TrackingError(
                    f"MLflow store {redact_url(self.uri)}: could not {action} for run {self.run_id} ({_describe(e)}). "
                    "Fix: check that the store is reachable and writable (a tracking server still running, "
                    "a disk not full), or use tracking=none."
                ) from e

    def _check_open(self) -> None:
        if self._ended:
            raise RuntimeError(
                f"MLflow run {self.run_id} has already ended; start or resume a run to log to it."
            )

    # ---------------------------------------------------------------------------------------------- Tracker

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params; nested mappings become dotted keys (`koopman.dim`), lists JSON strings. Re-logging a
        value already stored is a no-op; a different value raises `TrackingError` naming the keys (nothing is
        written)."""
        self._check_open()
        flat = flatten(params)
        new: dict[str, str] = {}
        long_values: dict[str, str] = {}
        conflicts: list[str] = []
        for key, value in flat.items():
            _check_key(key, "param")
            stored_value = value
            if len(value) > MAX_PARAM_VALUE_LENGTH:
                long_values[key] = value
                stored_value = _long_marker(value)
            old = self._params.get(key, new.get(key))
            if old is None:
                new[key] = stored_value
            elif old != stored_value:
                conflicts.append(f"{key} (stored {old[:80]!r}, new {stored_value[:80]!r})")
        if conflicts:
            raise TrackingError(
                f"MLflow params cannot change within a run ({self.run_id}): {'; '.join(conflicts)}. Fix: "
                "resume with the same config (compare .hydra/config.yaml), or start a new run for the new "
                "settings."
            )
        if not new:
            return
        if long_values:
            self._write_long_params(long_values)
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in new.items()]
        for chunk in _chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
            self._store("log params", self.client.log_batch, self.run_id, params=chunk, synchronous=True)
            self._params.update({p.key: p.value for p in chunk})

    def _write_long_params(self, values: Mapping[str, str]) -> None:
        if self._long_params is None:
            self._long_params = {}
            if any(v.endswith(f"{LONG_PARAMS_ARTIFACT}>") for v in self._params.values()):  # a resumed run
                with tempfile.TemporaryDirectory() as tmp:
                    path = self._store(
                        f"read {LONG_PARAMS_ARTIFACT}",
                        self.client.download_artifacts,
                        self.run_id,
                        LONG_PARAMS_ARTIFACT,
                        tmp,
                    )
                    self._long_params.update(json.loads(Path(path).read_text(encoding="utf-8")))
        self._long_params.update(values)
        self.log_dict(dict(sorted(self._long_params.items())), LONG_PARAMS_ARTIFACT)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Buffer `metrics` at `step` (timestamped now); written in batches (see the module docstring)."""
        self._check_open()
        now_ms = int(time.time() * 1000)
        step = int(step)
        rows = []
        for key, value in metrics.items():
            if key not in self._valid_metric_keys:
                self._valid_metric_keys.add(_check_key(key, "metric"))
            try:
                number = float(value)
            except (TypeError, ValueError) as e:
                raise TrackingError(
                    f"Metric {key!r} at step {step} is not a number ({value!r}). Fix: log a float (e.g. "
                    "tensor.item())."
                ) from e
            rows.append((key, number, now_ms, step))
        # Under `_storing`: a signal arriving while the lock is held is acted on after it is released.
        with self._storing(), self._lock:
            self._buffer.extend(rows)
            due = len(self._buffer) >= self.max_buffered or (
                self.flush_interval_s is not None
                and time.monotonic() - self._last_flush >= self.flush_interval_s
            )
        if due:
            self.flush()

    def flush(self) -> None:
        """Write buffered metrics now, at most 1,000 per `log_batch` call. On failure the unwritten ones stay
        buffered and `TrackingError` is raised."""
        from mlflow.entities import Metric

        # All inside `_storing`: a signal arriving here is acted on (run ended KILLED, which flushes again)
        # only after the unsent metrics are back in the buffer.
        with self._storing():
            pending: list[tuple[str, float, int, int]] = []
            sent = 0
            try:
                with self._lock:
                    pending = self._buffer
                    self._buffer = []
                    self._last_flush = time.monotonic()
                for chunk in _chunks(pending, MAX_METRICS_PER_BATCH):
                    metrics = [Metric(key, value, ts, step) for key, value, ts, step in chunk]
                    self._store(
                        "log metrics", self.client.log_batch, self.run_id, metrics=metrics, synchronous=True
                    )
                    sent += len(chunk)
            finally:
                if sent < len(pending):
                    with self._lock:
                        if self._buffer is not pending:  # (it still is if interrupted between the two lines)
                            self._buffer[:0] = pending[sent:]

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Log a file (or a folder's contents, see `log_dir`) under `artifact_path`."""
        self._check_open()
        path = Path(path)
        if path.is_dir():
            self.log_dir(path, artifact_path)
            return
        if not path.is_file():
            raise TrackingError(f"Cannot log artifact {path}: no such file. Fix: write it before logging it.")
        self._store(
            f"log artifact {path.name}", self.client.log_artifact, self.run_id, str(path), artifact_path
        )

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set tags now (tags, unlike params, may change). Values past MLflow's 8,000 characters are cut."""
        self._check_open()
        from mlflow.entities import RunTag

        items = [RunTag(_check_key(k, "tag"), str(v)[:MAX_TAG_VALUE_LENGTH]) for k, v in tags.items()]
        for chunk in _chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
            self._store("set tags", self.client.log_batch, self.run_id, tags=chunk, synchronous=True)

    def report(self, value: float, step: int) -> None:
        """Hand an intermediate objective to `report_hook` (may raise, e.g. `optuna.TrialPruned`)."""
        if self.report_hook is not None:
            self.report_hook(value, step)

    # ------------------------------------------------------------------------------------------------ extras

    def last_logged_step(self, key: str) -> int | None:
        """The largest step stored for metric `key` (buffered values are flushed first), None if none. A
        resumed run re-logs only the steps after it."""
        self.flush()
        history = self._store(f"read the history of {key}", self.client.get_metric_history, self.run_id, key)
        return max((m.step for m in history), default=None)

    def log_dir(self, local_dir: str | Path, artifact_path: str | None = None) -> None:
        """Log every file under `local_dir`, under `artifact_path` (default: the folder's own name, so Hydra's
        `.hydra/` lands in `.hydra/`)."""
        self._check_open()
        local_dir = Path(local_dir)
        if not local_dir.is_dir():
            raise TrackingError(f"Cannot log folder {local_dir}: not a folder. Fix: pass an existing folder.")
        target = artifact_path if artifact_path is not None else local_dir.resolve().name
        self._store(f"log folder {local_dir}", self.client.log_artifacts, self.run_id, str(local_dir), target)

    def log_dict(self, data: Mapping[str, Any], artifact_file: str = "summary.json") -> None:
        """Log a dict as a JSON (or, by extension, YAML) artifact, e.g. `summary.json`."""
        self._check_open()
        self._store(f"log {artifact_file}", self.client.log_dict, self.run_id, dict(data), artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        """Log a string as a file artifact (e.g. the resolved config YAML)."""
        self._check_open()
        self._store(f"log {artifact_file}", self.client.log_text, self.run_id, text, artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """Log a matplotlib (or plotly) figure as an image artifact."""
        self._check_open()
        self._store(f"log {artifact_file}", self.client.log_figure, self.run_id, figure, artifact_file)

    def log_training_curves(
        self, history: list[tuple[int, Mapping[str, float]]], artifact_file: str = "plots/training_curves.png"
    ) -> None:
        """Plot `history` with `plots.plot_training_curves` and log the image."""
        from kbk.tracking.plots import plot_training_curves

        directory, name = posixpath.split(artifact_file)
        with tempfile.TemporaryDirectory() as tmp:
            path = plot_training_curves(history, Path(tmp) / name)
            self.log_artifact(path, directory or None)

    def __repr__(self) -> str:
        state = "ended" if self._ended else "open"
        return f"MlflowTracker(run_id={self.run_id!r}, uri={redact_url(self.uri)!r}, {state})"
