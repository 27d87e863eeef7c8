"""Make a resumed run's metric history in the store exactly what an uninterrupted run would have logged.

A run flushes its metrics to the store right after each checkpoint (and never in between), but a process can die
between the checkpoint and the flush. On resume, the trainer's history (restored from the checkpoint) says what
should be in the store up to the checkpoint; the store says what is. `catch_up` logs the difference once. Metrics
after the checkpoint were never flushed, so the resumed run logs them afresh: no gap, no duplicate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# Metrics present at every log point of their kind; the last step stored for any of them is how far the store got.
PROBE_KEYS = ("train/loss_lm", "val/loss", "epoch/loss_lm")


def catch_up(tracker: Any, history: Sequence[tuple[int, Mapping[str, float]]]) -> int:
    """Log the entries of `history` past the last step the store holds; returns how many were logged."""
    stored = [s for s in (tracker.last_logged_step(k) for k in PROBE_KEYS) if s is not None]
    last_stored = max(stored, default=-1)
    missing = [(step, metrics) for step, metrics in history if step > last_stored]
    for step, metrics in missing:
        tracker.log_metrics(metrics, step)
    tracker.flush()
    return len(missing)
