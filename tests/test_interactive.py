"""kbk.interactive builds what `python -m kbk.run OVERRIDES` would train, for notebooks and benchmarks."""

import torch

from kbk.interactive import trainer_for
from tests.conftest import one_torch_thread


def test_trainer_for_builds_the_run_of_the_overrides_and_trains_a_step():
    with one_torch_thread():
        trainer = trainer_for(["model.d_model=32", "koopman.dim=16", "trainer.max_steps=7", "data.n_train_tokens=20000",
                               "data.n_val_tokens=4000"], floor=True)
        assert trainer.model.config.d_model == 32 and trainer.model.blocks[0].koopman.config.dim == 16
        assert trainer.total_steps == 7 and trainer.loss_floor is not None and trainer.loss_floor > 0
        inputs, targets = next(iter(trainer.train_batches.epoch(0)))
        before = [p.detach().clone() for p in trainer.model.parameters()]
        metrics = trainer.train_step(inputs, targets)
        assert torch.isfinite(torch.tensor(metrics["train/loss_lm"]))
        after = trainer.model.parameters()
        assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))  # a step was taken
