"""`trainer.compile=true`: the model is compiled in place (torch.compile through nn.Module.compile), its checkpoints
keep their keys, the key at its default leaves every config hash as it was, and a compiled model trains to the same
losses as the eager one (slow: compiling takes minutes on a CPU; experiments/benchmarks/compile.py says whether it
pays)."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, compose_kbk, one_torch_thread

from kbk import build, interactive
from kbk.config import settings_of
from kbk.identity import run_hash


def test_the_default_keeps_the_config_hash_and_true_changes_it():
    plain = run_hash(compose_kbk(list(TINY)))
    assert run_hash(compose_kbk([*TINY, "trainer.compile=false"])) == plain
    assert run_hash(compose_kbk([*TINY, "trainer.compile=true"])) != plain  # compiled kernels round differently


def test_compile_true_compiles_the_model_in_place_with_the_same_state_dict_keys():
    eager_cfg = settings_of(compose_kbk(list(TINY)))
    data = build.corpus(eager_cfg)
    eager = build.model(eager_cfg, data.vocab_size)
    compiled = build.model(settings_of(compose_kbk([*TINY, "trainer.compile=true"])), data.vocab_size)
    assert eager._compiled_call_impl is None and compiled._compiled_call_impl is not None
    assert list(compiled.state_dict()) == list(eager.state_dict())  # checkpoints load either way
    assert type(compiled) is type(eager)  # not a wrapper: koopman_dynamics(), param_groups() as before


@pytest.mark.slow
def test_a_compiled_model_trains_to_the_eager_losses():
    losses = {}
    for compiled in (False, True):
        trainer = interactive.trainer_for([*TINY, "trainer.max_steps=3", "trainer.device=cpu",
                                           f"trainer.compile={str(compiled).lower()}"])
        batches = iter(trainer.train_batches.epoch(0))
        with one_torch_thread():
            losses[compiled] = [trainer.train_step(*next(batches))["train/loss_total"] for _ in range(3)]
    assert losses[True] == pytest.approx(losses[False], rel=1e-4), losses
    assert torch.isfinite(torch.tensor(losses[True])).all()
