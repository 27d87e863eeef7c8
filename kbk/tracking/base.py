"""The small interface the trainer talks to. No MLflow here: training code depends only on this."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Tracker(Protocol):
    """What a trainer may ask of an experiment tracker: to record. (What else happens at an evaluation, such as a
    pruner's report, is a trainer callback's.) `flush` is called right after a checkpoint is written, so a tracker
    that buffers metrics can make what it has logged agree with what a resumed run will re-log.
    """

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def set_tags(self, tags: Mapping[str, str]) -> None: ...

    def flush(self) -> None: ...


class NullTracker:
    """Tracks nothing: for tests, notebooks and `tracking=none`. Keeps the logged metrics for inspection. Has the
    run lifecycle of `MlflowTracker` too (a context manager, signal handling), doing nothing, so a job treats both
    alike."""

    run_id = None
    deferred_signal = None

    def __init__(self) -> None:
        self.history: list[tuple[int, dict[str, float]]] = []

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.history.append((step, dict(metrics)))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass

    def flush(self) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        pass

    def install_signal_handlers(self) -> None:
        pass  # a signal stops the job as it would any program: there is no run to end

    def defer_signals(self) -> None:
        pass

    def __enter__(self) -> NullTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        pass
