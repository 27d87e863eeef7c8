"""A short run's results, pinned: speed work must not change what is computed.

The expected values below were RECORDED from the code before the "cheap trials" work (issue 11), on x86_64 with
torch 2.13 CPU and one torch thread; they are hard-coded because a frozen copy of the old code cannot live in the
test. The training trajectory (every logged training loss, the final operators, the DMD counters) must match
bitwise. Evaluation numbers are pinned to 1e-6 relative: evaluating in bigger batches sums the same per-token
losses in another order. Another BLAS or CPU family may round differently: re-record there, do not loosen.
"""

from __future__ import annotations

import hashlib

import pytest
import torch

from kbk.data.batching import TokenBatches
from kbk.data.synthetic import load_synthetic
from kbk.models.koopman_lm import KoopmanOptions, KoopmanResNetBKLM
from kbk.training.schedules import KoopmanWeightSchedule
from kbk.training.trainer import HybridTrainer, TrainerOptions
from tests.conftest import one_torch_thread

STEPS = 20


def short_run(operator_update: str) -> HybridTrainer:
    """20 steps of a 2-layer model on synthetic data, Koopman learning on from step 2, DMD writing every step."""
    data = load_synthetic(vocab_size=48, n_states=8, n_train_tokens=8000, n_val_tokens=2000, seed=3)
    torch.manual_seed(0)
    model = KoopmanResNetBKLM(data.vocab_size, d_model=32, n_layers=2, n_seq=32, num_experts=2,
                              koopman=KoopmanOptions(dim=32, operator_update=operator_update, sample_tokens=64,
                                                     dmd={"buffer_size": 48, "alpha": 0.3}))
    train = TokenBatches(data.train, 32, 8, shuffle=True, seed=0, drop_last=True)
    val = TokenBatches(data.val, 32, 8, shuffle=False)
    options = TrainerOptions(epochs=1, max_steps=STEPS, eval_every=10, log_every=1, lr=3e-3)
    schedule = KoopmanWeightSchedule("linear", 0.0, 0.5, warmup=2, total=STEPS, unit="step")
    trainer = HybridTrainer(model, train, val, options, schedule)
    with one_torch_thread():
        trainer.fit()
    return trainer


def trajectory(trainer: HybridTrainer) -> list[str]:
    """Every logged training loss, as exact hex floats."""
    keys = ("train/loss_lm", "train/loss_koopman", "train/loss_total")
    return [f"{step}:{key}={float(m[key]).hex()}" for step, m in trainer.history for key in keys if key in m]


def digest(trainer: HybridTrainer) -> str:
    """SHA-256 of every operator's bytes and the trajectory: one string that changes with any bit of either."""
    h = hashlib.sha256()
    for dyn in trainer.model.koopman_dynamics():
        h.update(dyn.operator.detach().contiguous().numpy().tobytes())
    h.update("\n".join(trajectory(trainer)).encode())
    return h.hexdigest()


EXPECTED = {
    "both": {
        "last_losses": [
            "20:train/loss_lm=0x1.dcdee00000000p+1",
            "20:train/loss_koopman=0x1.0bbc3c0000000p+1",
            "20:train/loss_total=0x1.2da68c0000000p+2",
        ],
        "digest": "ddb5ba466f7cc2f8c501b91b93f00fb43ee8db1a743335e6d46d2548bde53218",
        "dmd_accepted": 36,
        "eval": {
            "val/loss": 3.6294726402528825,
            "val/loss_koopman": 3.64224172407581,
            "koopman/0/val_ppl_koopman_only": 37.84357490220283,
            "koopman/1/val_ppl_skip_only": 41.141771425889665,
            "koopman/0/spectral_radius": 1.112841281852965,
            "koopman/1/dmd_condition": 27059.70537904252,
            "koopman/0/state_rel_err": 1.4955860986476435,
        },
    },
    "dmd": {
        "last_losses": [
            "20:train/loss_lm=0x1.dcd6280000000p+1",
            "20:train/loss_koopman=0x1.0e7d440000000p+1",
            "20:train/loss_total=0x1.2e48a80000000p+2",
        ],
        "digest": "7ee2cb99057c39fb052b9ab4318fa44928f65b78db6dd6898904b53f627f832c",
        "dmd_accepted": 36,
        "eval": {
            "val/loss": 3.629456150916315,
            "val/loss_koopman": 3.6427467100081907,
            "koopman/0/val_ppl_koopman_only": 37.85220848858508,
            "koopman/1/val_ppl_skip_only": 41.14323583515475,
            "koopman/0/spectral_radius": 1.0894725393961595,
            "koopman/1/dmd_condition": 26944.095967253812,
            "koopman/0/state_rel_err": 1.501130852618678,
        },
    },
}


@pytest.mark.parametrize("operator_update", ["both", "dmd"])
def test_short_run_reproduces_the_recorded_results(operator_update):
    trainer = short_run(operator_update)
    expected = EXPECTED[operator_update]
    assert trajectory(trainer)[-3:] == expected["last_losses"]
    assert digest(trainer) == expected["digest"]
    assert trainer.events["dmd_accepted"] == expected["dmd_accepted"]
    for key, value in expected["eval"].items():
        assert trainer.summary[key] == pytest.approx(value, rel=1e-6), key
