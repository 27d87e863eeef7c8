"""`koopman.own_rng`: with the companions on a random stream of their own, Koopman learning with a detached
backbone leaves the language model exactly as Koopman off trains it; with the shared stream it does not."""

from __future__ import annotations

import itertools

import pytest
import torch

from kbk.interactive import trainer_for
from kbk.training.schedules import KoopmanWeightSchedule

# Big enough that the gradient-norm clip never acts: it is the one other path from the Koopman terms to the backbone.
BASE = ["model=tiny", "data.n_train_tokens=20000", "data.n_val_tokens=4000",
        "trainer.grad_clip=1000", "seed=3"]


def trained(overrides: list[str], steps: int = 4):
    trainer = trainer_for([*BASE, *overrides])
    # Koopman learning from the first step, so that every step draws the token sample and feeds DMD.
    trainer.schedule = KoopmanWeightSchedule("constant", 0.0, 0.1, warmup=0, total=10**9, unit="step")
    batches = itertools.chain.from_iterable(trainer.train_batches.epoch(e) for e in itertools.count())
    for x, y in itertools.islice(batches, steps):
        trainer.train_step(x, y)
        trainer.step += 1
    return trainer


def backbone(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if ".koopman." not in k and not k.startswith("koopman_rng")}


def same_backbone(a, b) -> bool:
    wa, wb = backbone(a.model), backbone(b.model)
    assert wa.keys() == wb.keys()
    return all(torch.equal(wa[k], wb[k]) for k in wa)


def test_own_rng_trains_the_same_language_model_as_koopman_off():
    off = trained(["koopman=off"])
    on = trained(["koopman.own_rng=true"])
    assert on.model.koopman_dynamics()[0].dmd.n_seen > 0  # the companions did learn and feed DMD
    assert same_backbone(on, off)


def test_with_the_shared_stream_koopman_on_and_off_differ():
    assert not same_backbone(trained(["koopman.own_rng=false"], steps=0), trained(["koopman=off"], steps=0))


@pytest.mark.parametrize("own_rng", [True, False])
def test_a_restored_checkpoint_draws_what_the_uninterrupted_run_draws(own_rng):
    overrides = [f"koopman.own_rng={str(own_rng).lower()}"]
    straight = trained(overrides, steps=6)
    first = trained(overrides, steps=3)
    state = first.state_dict()
    resumed = trainer_for([*BASE, *overrides])
    resumed.schedule = first.schedule
    resumed.load_state_dict(state)
    batches = itertools.chain.from_iterable(resumed.train_batches.epoch(e) for e in itertools.count())
    for x, y in itertools.islice(batches, 3, 6):
        resumed.train_step(x, y)
        resumed.step += 1
    for k, v in straight.model.state_dict().items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, resumed.model.state_dict()[k]), k
