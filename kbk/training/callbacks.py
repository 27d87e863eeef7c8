"""Trainer callbacks (`kbk.training.trainer.Callback`): what happens at each evaluation besides logging.

    HybridTrainer(..., callbacks=[ProgressPrinter(console.progress_printer(), live=console.live_line()),
                                  ReportMetric(hook, "val/ppl")])

Each wraps a plain function, so the trainer knows neither the console nor Optuna. Besides: early stopping and the
best checkpoint (`WatchMetric`), torch.profiler over some steps (`Profile`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


class ProgressPrinter:
    """Hands `show` one dict per evaluation: where training stands (`step`, `epoch`, `total_steps`,
    `train_seconds`), the latest logged training metrics, the evaluation's, and `eta_seconds` (what
    `kbk.console.progress_printer()` prints). With `live` (`kbk.console.live_line()` on a terminal), hands it
    `step`, `total_steps`, `tokens_per_s` and `eta_seconds` after each optimiser step, at most every
    `live_interval_s`, and clears it before each evaluation's line.

    The ETA is the remaining steps at this process's mean step time (wall clock between steps, evaluations
    left out), plus the remaining periodic evaluations and the final one at the last evaluation's duration."""

    def __init__(self, show: Callable[[dict[str, Any]], None], live: Any = None, live_interval_s: float = 0.25,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.show = show
        self.live = live
        self.live_interval_s = live_interval_s
        self.clock = clock
        self.started = self.last_step_end = self.last_drawn = 0.0
        self.first_step = 0
        self.evaluating_s = 0.0  # all evaluations so far (with their logging and callbacks before this one)
        self.last_evaluation_s: float | None = None
        self.tokens_per_s: float | None = None

    def on_train_start(self, trainer) -> None:
        self.started = self.last_step_end = self.clock()
        self.first_step = trainer.step

    def on_step_end(self, trainer, metrics: dict[str, float]) -> None:
        now = self.last_step_end = self.clock()
        if "perf/tokens_per_s" in metrics:  # smoothed: one step's rate jumps with the machine's load
            rate = metrics["perf/tokens_per_s"]
            self.tokens_per_s = rate if self.tokens_per_s is None else 0.9 * self.tokens_per_s + 0.1 * rate
        if self.live is not None and now - self.last_drawn >= self.live_interval_s:
            self.last_drawn = now
            self.live({"step": trainer.step, "total_steps": trainer.total_steps,
                       "tokens_per_s": self.tokens_per_s or 0.0, "eta_seconds": self.eta(trainer, now)})

    def on_evaluation(self, trainer, metrics: dict[str, float]) -> None:
        now = self.clock()
        self.last_evaluation_s = now - self.last_step_end
        self.evaluating_s += self.last_evaluation_s
        if self.live is not None:
            self.live.clear()
        recent = next((m for _, m in reversed(trainer.history) if "train/loss_lm" in m), {})
        self.show({"step": trainer.step, "epoch": trainer.epoch, "total_steps": trainer.total_steps, **recent,
                   **metrics, "train_seconds": trainer.train_seconds, "eta_seconds": self.eta(trainer, now)})
        self.last_step_end = self.clock()  # the line and the other callbacks are not the next step's time

    def on_train_end(self, trainer) -> None:
        if self.live is not None:
            self.live.clear()

    def eta(self, trainer, now: float) -> float:
        """Seconds until the run's summary: steps, periodic evaluations, and the final evaluation."""
        done = trainer.step - self.first_step
        if done <= 0:
            return math.inf
        per_step = max(now - self.started - self.evaluating_s, 0.0) / done
        remaining = max(trainer.total_steps - trainer.step, 0)
        every = trainer.options.eval_every
        per_epoch = trainer.total_steps / max(trainer.options.epochs, 1)
        evaluations = (trainer.total_steps // every - trainer.step // every if every else
                       math.ceil(remaining / max(per_epoch, 1)))
        return per_step * remaining + (self.last_evaluation_s or 0.0) * (evaluations + 1)


class ReportMetric:
    """Hands `report(value, step)` the value of `metric` at each evaluation that produces it: a sweep's pruning
    hook (`kbk.sweep.trial.report_hook_from_env()`, which may raise `optuna.TrialPruned`) fed the metric the
    sweep optimises."""

    def __init__(self, report: Callable[[float, int], None], metric: str) -> None:
        self.report = report
        self.metric = metric

    def on_evaluation(self, trainer, metrics: dict[str, float]) -> None:
        if self.metric in metrics:
            self.report(metrics[self.metric], trainer.step)


#: Metrics that are better higher; every other watched metric (losses, perplexities) is better lower.
MAXIMIZED_METRICS = ("perf/tokens_per_s",)


class WatchMetric:
    """Early stopping and the best checkpoint on one metric of the evaluations (the run's `optimized_metric`).

    `patience` (None: never stop): ask the trainer to stop after that many evaluations in a row without a value
    better than the best so far. `save_best`: at each evaluation that improves on every earlier one, write the
    trainer's state to `best.pt` beside its checkpoint (`trainer.checkpoint_path`). The best value and the
    evaluations since it are read from `trainer.history`, which checkpoints hold: a resumed run goes on counting."""

    def __init__(self, metric: str, patience: int | None = None, save_best: bool = False,
                 say: Callable[[str], None] = print) -> None:
        self.metric = metric
        self.patience = patience
        self.save_best = save_best
        self.say = say
        self.sign = -1.0 if metric in MAXIMIZED_METRICS else 1.0  # compare sign * value: lower is better

    def on_evaluation(self, trainer, metrics: dict[str, float]) -> None:
        if self.metric not in metrics:
            return
        # Every evaluation's value, this one last (the trainer logs an evaluation before its callbacks run).
        values = [self._score(m[self.metric]) for _, m in trainer.history if self.metric in m]
        best_at = min(range(len(values)), key=lambda i: (values[i], i))  # the first of equal bests
        if best_at == len(values) - 1 and values[-1] != math.inf:
            if self.save_best and trainer.checkpoint_path is not None:
                from kbk.training.checkpoint import save_checkpoint

                save_checkpoint(trainer.state_dict(), best_checkpoint_path(trainer.checkpoint_path))
            return
        waited = len(values) - 1 - best_at
        if self.patience is not None and waited >= self.patience:
            reason = (f"early stopping at step {trainer.step}: {self.metric} has not improved for {waited} "
                      f"evaluations (best {self.sign * values[best_at]:.6g})")
            self.say(reason)
            trainer.request_stop(reason)

    def _score(self, value: float) -> float:
        value = self.sign * float(value)
        return value if math.isfinite(value) else math.inf  # a NaN is never the best


def best_checkpoint_path(last: Path) -> Path:
    """Where `WatchMetric` writes the best evaluation's checkpoint: `best.pt` beside `last`."""
    return Path(last).with_name("best.pt")


class Profile:
    """`torch.profiler` over `steps` optimiser steps after one warm-up step; writes the Chrome trace
    (`trace.json`, open it in chrome://tracing or https://ui.perfetto.dev) and the operators' key-averages table
    (`key_averages.txt`) into `folder` when those steps are done, or when training ends before them."""

    def __init__(self, folder: Path, steps: int, say: Callable[[str], None] = print) -> None:
        self.folder = Path(folder)
        self.steps = steps
        self.say = say
        self.profiler = None
        self.sort_by = "self_cpu_time_total"
        self.written = False

    def on_train_start(self, trainer) -> None:
        import torch

        activities = [torch.profiler.ProfilerActivity.CPU]
        self.sort_by = "self_cpu_time_total"
        if trainer.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.sort_by = "self_cuda_time_total"
        self.profiler = torch.profiler.profile(
            activities=activities, schedule=torch.profiler.schedule(wait=0, warmup=1, active=self.steps, repeat=1),
            on_trace_ready=self._write, record_shapes=True)
        self.profiler.start()

    def on_step_end(self, trainer, metrics: dict[str, float]) -> None:
        if self.profiler is not None:
            self.profiler.step()

    def on_evaluation(self, trainer, metrics: dict[str, float]) -> None:
        pass

    def on_train_end(self, trainer) -> None:
        if self.profiler is not None:
            self.profiler.stop()  # writes the trace if the run ended while recording
            self.profiler = None
        if not self.written:
            self.say(f"profile: nothing written, training ended before its warm-up step and {self.steps} profiled "
                     f"steps: raise trainer.max_steps or lower trainer.profile_steps")

    def _write(self, profiler) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        profiler.export_chrome_trace(str(self.folder / "trace.json"))
        (self.folder / "key_averages.txt").write_text(profiler.key_averages().table(sort_by=self.sort_by,
                                                                                     row_limit=40))
        self.written = True
        self.say(f"profile: {self.folder / 'trace.json'} and {self.folder / 'key_averages.txt'}")
