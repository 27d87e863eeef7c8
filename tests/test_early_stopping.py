"""Early stopping and the best checkpoint on the run's optimized_metric (`trainer.early_stopping_patience`,
`trainer.save_best`; `kbk.training.callbacks.WatchMetric`)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY, compose_kbk, one_torch_thread
from test_run import run_in_process
from test_trainer import make_trainer

from kbk.config import settings_of
from kbk.errors import ConfigError
from kbk.training.callbacks import WatchMetric, best_checkpoint_path
from kbk.training.checkpoint import load_checkpoint


def test_a_run_whose_metric_cannot_improve_stops_after_patience_evaluations(tmp_path):
    # lr 1e-12 moves no float32 weight: every evaluation repeats the first one's val/loss exactly.
    overrides = [*TINY, "koopman=off", "trainer.lr=1e-12", "trainer.max_steps=40", "trainer.eval_every=4",
                 "trainer.early_stopping_patience=2", "trainer.save_best=true", "optimized_metric=val/loss",
                 "tracking=none", f"paths.outputs={tmp_path / 'outputs'}"]
    run_in_process(overrides, tmp_path / "job")
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    assert summary["steps"] == 12  # evaluations at 4 (the best), 8 and 12 (no better): stopped
    last = tmp_path / "job" / "checkpoints" / "last.pt"  # in the run's own folder
    best = load_checkpoint(best_checkpoint_path(last))
    assert best["position"]["step"] == 4 and load_checkpoint(last)["position"]["step"] == 12


class DamageAfter:
    """At the evaluation of `step`, add noise to every weight and stop learning (lr ~0): every later evaluation is
    worse, so the best one is known. Also keeps each evaluation's LM-head weights."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.weights: dict[int, torch.Tensor] = {}

    def on_evaluation(self, trainer, metrics) -> None:
        self.weights[trainer.step] = trainer.model.lm_head.weight.detach().clone()
        if trainer.step == self.step:
            with torch.no_grad():
                for p in trainer.model.parameters():
                    p.add_(torch.randn_like(p))
            trainer.lr_scheduler.base_lrs = [1e-12] * len(trainer.lr_scheduler.base_lrs)


def test_best_pt_holds_the_best_evaluations_step_and_weights(tmp_path):
    trainer = make_trainer(tmp_path, epochs=3, lr=3e-2, layerwise_eval=False)
    damage = DamageAfter(step=16)
    trainer.callbacks += [WatchMetric("val/ppl", save_best=True), damage]
    with one_torch_thread():
        trainer.fit()
    evaluations = [(step, m["val/ppl"]) for step, m in trainer.history if "val/ppl" in m][:-1]  # [-1]: the final
    assert min(evaluations, key=lambda e: e[1])[0] == 16 and evaluations[-1][0] == 28
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["position"]["step"] == 16
    assert best["last_eval"][1]["val/ppl"] == min(v for _, v in evaluations)
    assert torch.equal(best["model"]["lm_head.weight"], damage.weights[16])


def test_a_better_value_resets_the_patience_and_a_higher_is_better_metric_counts_up():
    class Trainer:  # what WatchMetric reads and calls
        checkpoint_path = None
        step = 0
        stop_reason = None

        def __init__(self):
            self.history = []

        def request_stop(self, reason):
            self.stop_reason = reason

    def feed(metric, values, patience):
        trainer, watch = Trainer(), WatchMetric(metric, patience=patience, say=lambda _: None)
        for i, value in enumerate(values):
            trainer.step = i
            trainer.history.append((i, {metric: value}))
            watch.on_evaluation(trainer, {metric: value})
            if trainer.stop_reason:
                return i
        return None

    assert feed("val/loss", [3.0, 3.1, 2.0, 2.5, 2.4, 2.9], patience=3) == 5  # 2.0 at 2 reset the count
    assert feed("val/loss", [3.0, 3.1, 2.0, 2.5, 1.9, 2.9], patience=3) is None
    assert feed("val/loss", [3.0, float("nan"), 3.0], patience=2) == 2  # NaN and a tie are no improvement
    assert feed("perf/tokens_per_s", [10.0, 12.0, 11.0, 12.0], patience=2) == 3


@pytest.mark.parametrize("override", ["trainer.early_stopping_patience=3", "trainer.save_best=true"])
def test_watching_a_metric_evaluations_do_not_produce_is_refused(override):
    with pytest.raises(ConfigError, match=r"optimized_metric='perf/step_ms'.*optimized_metric=val/loss"):
        settings_of(compose_kbk([override, "optimized_metric=perf/step_ms"]))


def test_patience_must_be_positive():
    with pytest.raises(ConfigError, match=r"trainer\.early_stopping_patience=0"):
        settings_of(compose_kbk(["trainer.early_stopping_patience=0"]))
