"""Trainer callbacks (`kbk.training.trainer.Callback`): what happens at each evaluation besides logging.

    HybridTrainer(..., callbacks=[ProgressPrinter(console.progress_printer()), ReportMetric(hook, "val/ppl")])

Each wraps a plain function, so the trainer knows neither the console nor Optuna.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class ProgressPrinter:
    """Hands `show` one dict per evaluation: where training stands (`step`, `epoch`, `total_steps`,
    `train_seconds`), the latest logged training metrics and the evaluation's (what
    `kbk.console.progress_printer()` prints)."""

    def __init__(self, show: Callable[[dict[str, Any]], None]) -> None:
        self.show = show

    def on_evaluation(self, trainer, metrics: dict[str, float]) -> None:
        recent = next((m for _, m in reversed(trainer.history) if "train/loss_lm" in m), {})
        self.show({"step": trainer.step, "epoch": trainer.epoch, "total_steps": trainer.total_steps, **recent,
                   **metrics, "train_seconds": trainer.train_seconds})


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
