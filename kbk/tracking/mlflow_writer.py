"""`MlflowWriter`: writes the params, metrics, tags and artifacts of one open MLflow run; nothing else. Opening,
ending and guarding the run is `mlflow_tracker.MlflowTracker`'s (a writer with a lifecycle).

Built on `MlflowClient` only, never on MLflow's fluent API (`mlflow.start_run`, `mlflow.log_metric`), which keeps
one global "active run" per process: with the client, a sweep's parent run and a trial's run can be open in the
same process, and a child run made in another process is nested through the `mlflow.parentRunId` tag.

Decisions (the traps are in docs/sweeps.md, "MLflow"):

- Metrics are buffered and written with `log_batch` (at most 1,000 per call) on `flush()`, when the run ends,
  when the buffer holds `max_buffered` values, and at the first `log_metrics` after `flush_interval_s` (so a live
  run shows progress). No call to the store per number.
- Non-finite values are logged, not skipped: MLflow stores NaN as NaN, and its SQL stores clamp ±inf to ±1.797e308
  (the largest float). A diverging run is then visible in its curves.
- Params are immutable: the same value again is a no-op (resume re-logs the config), another value raises
  `TrackingError` naming the keys, before anything is written. A value longer than MLflow's 6,000 characters
  (which MLflow would cut with only a warning) is written in full to the artifact `params_long.json`; the param
  holds a short marker with its length and hash, so a changed long value is still caught.
- Every store call goes through `_store`: a failure is one `TrackingError` naming the store and the fix, and a
  signal that arrives during a call is acted on only once the call has unwound (`_store_calls_done`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import posixpath
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kbk.errors import TrackingError
from kbk.tracking.run_params import flatten
from kbk.urls import redact_url

if TYPE_CHECKING:
    from mlflow import MlflowClient

#: MLflow's limits (mlflow.utils.validation), kept here so that importing this module does not import MLflow.
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
MAX_KEY_LENGTH = 250
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100

LONG_PARAMS_ARTIFACT = "params_long.json"

_KEY_RE = re.compile(r"^[/\w.\- :]+$")


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


def describe(error: BaseException) -> str:
    """`Type: first line of the message`, for end reasons and error messages."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


class MlflowWriter:
    """Writes to MLflow run `run_id` through `client`: the trainer's `Tracker` interface plus artifacts."""

    def __init__(
        self,
        client: MlflowClient,
        run_id: str,
        *,
        uri: str | None = None,
        flush_interval_s: float | None = 30.0,
        max_buffered: int = 10_000,
        known_params: Mapping[str, str] | None = None,
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.uri = uri if uri is not None else client.tracking_uri
        self.flush_interval_s = flush_interval_s
        self.max_buffered = max(1, int(max_buffered))
        self._params: dict[str, str] = dict(known_params or {})
        self._long_params: dict[str, str] | None = None  # loaded lazily from the artifact on a resumed run
        self._buffer: list[tuple[str, float, int, int]] = []  # (key, value, timestamp ms, step)
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()
        self._valid_metric_keys: set[str] = set()
        self._ended = False  # set when the run is ended or let go of: nothing more is written
        self._store_calls = 0  # > 0 while a store call runs (a signal handler must not start another then)

    # ------------------------------------------------------------------------------------------- store calls

    @contextlib.contextmanager
    def _storing(self) -> Iterator[None]:
        """Marks store work in progress; `_store_calls_done` runs once all of it has unwound."""
        self._store_calls += 1
        try:
            yield
        finally:
            self._store_calls -= 1
            if self._store_calls == 0:
                self._store_calls_done()

    def _store_calls_done(self) -> None:
        """Called when no store call is running any more (the lifecycle ends a run a signal asked to end here)."""

    def _store(self, action: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with self._storing():
            try:
                return fn(*args, **kwargs)
            except TrackingError:
                raise
            except Exception as e:
                raise TrackingError(
                    f"MLflow store {redact_url(self.uri)}: could not {action} for run {self.run_id} ({describe(e)}). "
                    "Fix: check that the store is reachable and writable (a tracking server still running, "
                    "a disk not full), or use tracking=none."
                ) from e

    def _check_open(self) -> None:
        if self._ended:
            raise RuntimeError(
                f"MLflow run {self.run_id} has already ended; start or resume a run to log to it."
            )

    # ------------------------------------------------------------------------------------------------ params

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

    # ----------------------------------------------------------------------------------------------- metrics

    def log_metrics(self, metrics: Mapping[str, float], step: int, timestamp_ms: int | None = None) -> None:
        """Buffer `metrics` at `step`, timestamped `timestamp_ms` (default now: a `PendingTracker` passes the time
        they were logged before the run existed); written in batches (see the module docstring)."""
        self._check_open()
        now_ms = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
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

    def last_logged_step(self, key: str) -> int | None:
        """The largest step stored for metric `key` (buffered values are flushed first), None if none."""
        self.flush()
        history = self._store(f"read the history of {key}", self.client.get_metric_history, self.run_id, key)
        return max((m.step for m in history), default=None)

    # -------------------------------------------------------------------------------------------------- tags

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set tags now (tags, unlike params, may change). Values past MLflow's 8,000 characters are cut."""
        self._check_open()
        from mlflow.entities import RunTag

        items = [RunTag(_check_key(k, "tag"), str(v)[:MAX_TAG_VALUE_LENGTH]) for k, v in tags.items()]
        for chunk in _chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
            self._store("set tags", self.client.log_batch, self.run_id, tags=chunk, synchronous=True)

    # --------------------------------------------------------------------------------------------- artifacts

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

    def log_inputs(self, datasets: Iterable[Any]) -> None:
        """Log MLflow `DatasetInput`s: the run's Dataset column (the store keeps one of each dataset and context)."""
        self._check_open()
        self._store("log the dataset inputs", self.client.log_inputs, self.run_id, datasets=list(datasets))

    def log_text(self, text: str, artifact_file: str) -> None:
        """Log a string as a file artifact (e.g. the resolved config YAML)."""
        self._check_open()
        self._store(f"log {artifact_file}", self.client.log_text, self.run_id, text, artifact_file)
