"""The timing loop the benchmarks share: configurations measured side by side, in rounds, so that a drifting load
on a shared machine hits every configuration alike."""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Iterable


def interleaved(keys: Iterable[Hashable], warmup: int, rounds: int,
                measure: Callable[[Hashable], float]) -> dict[Hashable, list[float]]:
    """Per key, what `measure(key)` returned (seconds) in each of `rounds` rounds after `warmup` untimed ones. Each
    round measures every key once, in a fresh random order (seeded: a rerun measures in the same order)."""
    keys = list(keys)
    times: dict[Hashable, list[float]] = {key: [] for key in keys}
    rng = random.Random(0)
    for i in range(warmup + rounds):
        order = list(keys)
        rng.shuffle(order)
        for key in order:
            elapsed = measure(key)
            if i >= warmup:
                times[key].append(elapsed)
    return times
