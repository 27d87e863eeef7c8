"""What evaluation costs, and that it is not paid twice: `eval_seconds` in a run's summary, and the operator
diagnostics' eigendecomposition done once per distinct operator."""

from __future__ import annotations

import time

import torch
from torch.profiler import profile

from kbk.koopman import diagnostics
from tests.test_trainer import Recorder, make_trainer


def test_the_summary_has_the_seconds_spent_in_evaluation_and_checkpoints_keep_them(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=10)  # evaluations at 4 and 8, the final one (with layer-wise) at 10
    seen = []
    trainer.callbacks = [Recorder()]
    trainer.callbacks[0].on_evaluation = lambda t, metrics: seen.append(t.eval_seconds)
    start = time.perf_counter()
    summary = trainer.fit()
    wall = time.perf_counter() - start
    assert len(seen) == 2 and 0 < seen[0] < seen[1] < summary["eval_seconds"]  # each evaluation adds its time
    assert summary["eval_seconds"] + summary["train_seconds"] < wall  # two disjoint parts of the run
    resumed = make_trainer(tmp_path, max_steps=10)
    resumed.resume()
    assert resumed.eval_seconds == summary["eval_seconds"]


def eigendecompositions(function, *args) -> int:
    with profile() as prof:
        function(*args)
    return sum(event.count for event in prof.key_averages() if event.key == "aten::linalg_eigvals")


def test_an_operator_already_measured_is_not_decomposed_again_and_gives_the_same_numbers():
    torch.manual_seed(7)
    operator = torch.eye(40) + 0.3 * torch.randn(40, 40)
    first = diagnostics.koopman_operator_stats(operator, torch.eye(40))
    assert eigendecompositions(diagnostics.koopman_operator_stats, operator.clone(), torch.eye(40)) == 0
    assert diagnostics.koopman_operator_stats(operator.clone(), torch.eye(40)) == first
    returned = diagnostics.eigenvalues(operator)
    returned.zero_()  # a caller's change to the result does not reach the kept copy
    assert diagnostics.spectral_radius(operator) == first["spectral_radius"] > 0
    moved = operator.clone()
    moved[3, 5] = torch.nextafter(moved[3, 5], torch.tensor(2.0))  # one float32 ulp: another operator
    assert eigendecompositions(diagnostics.eigenvalues, moved) == 1
    assert diagnostics.operator_norm(moved) != first["norm_2"]
