"""Learning-rate warm-up and cosine decay, and gradient accumulation (`trainer.lr_schedule`, `trainer.warmup_steps`,
`trainer.min_lr`, `trainer.grad_accum_steps`)."""

from __future__ import annotations

import math
import subprocess

import pytest
import torch
from conftest import TINY, clean_env, compose_kbk, kbk_command
from test_trainer import VOCAB, CrashAt, make_trainer, stream

from kbk.config import settings_of
from kbk.data.batching import TokenBatches
from kbk.errors import ConfigError
from kbk.models.koopman_lm import KoopmanResNetBKLM
from kbk.paths import PROJECT_ROOT
from kbk.training.trainer import HybridTrainer, TrainerOptions

LR, MIN_LR, WARMUP = 1e-2, 1e-3, 4


def logged_lrs(trainer: HybridTrainer) -> dict[int, float]:
    """The lr of each optimiser step (0-based), from the per-step train metrics (log_every=1)."""
    return {step - 1: m["train/lr"] for step, m in trainer.history if "train/lr" in m}


def logging_every_step(trainer: HybridTrainer) -> HybridTrainer:
    trainer.options.log_every = 1  # make_trainer logs every 2nd step
    return trainer


def cosine_trainer(tmp_path=None, **opts) -> HybridTrainer:
    return logging_every_step(make_trainer(tmp_path, epochs=2, lr=LR, lr_schedule="cosine",
                                           warmup_steps=WARMUP, min_lr=MIN_LR, **opts))


def test_warmup_then_cosine_follows_the_closed_form():
    trainer = cosine_trainer()
    trainer.fit()
    lrs, last = logged_lrs(trainer), trainer.total_steps - 1
    assert last == 19 and sorted(lrs) == list(range(20))
    expected = {0: 0.0, 1: LR / 4, 3: 3 * LR / 4, WARMUP: LR, last: MIN_LR}
    for step in (7, 11, 16):  # cosine from LR at WARMUP to MIN_LR at the last step
        expected[step] = MIN_LR + (LR - MIN_LR) * 0.5 * (1 + math.cos(math.pi * (step - WARMUP) / (last - WARMUP)))
    for step, lr in expected.items():
        assert lrs[step] == pytest.approx(lr, rel=1e-12, abs=1e-15), step


def test_the_default_schedule_keeps_lr_constant():
    trainer = logging_every_step(make_trainer(max_steps=6, lr=LR))
    trainer.fit()
    assert set(logged_lrs(trainer).values()) == {LR}
    assert all(g["lr"] == LR for g in trainer.optimizer.param_groups)


def crash_mid_decay(tmp_path) -> tuple[HybridTrainer, HybridTrainer]:
    """(an uninterrupted cosine run, the same run stopped at step 8 with checkpoints every 3 steps)."""
    uninterrupted = cosine_trainer(tmp_path / "a", checkpoint_every=3)
    uninterrupted.fit()
    crashed = cosine_trainer(tmp_path / "b", checkpoint_every=3, tracker=CrashAt(8))
    with pytest.raises(KeyboardInterrupt):
        crashed.fit()
    return uninterrupted, crashed


def test_a_resumed_run_continues_the_same_lr_schedule(tmp_path):
    uninterrupted, _ = crash_mid_decay(tmp_path)
    resumed = cosine_trainer(tmp_path / "b", checkpoint_every=3)
    resumed.resume()
    assert resumed.step == 6  # the last checkpoint before the crash, mid-decay
    resumed.fit()
    assert logged_lrs(resumed) == logged_lrs(uninterrupted)


def test_a_checkpoint_from_before_lr_schedules_resumes_on_the_same_schedule(tmp_path):
    uninterrupted, crashed = crash_mid_decay(tmp_path)
    path = crashed.checkpoint_path
    state = torch.load(path, weights_only=False)
    del state["lr_scheduler"]  # as kbk wrote checkpoints before trainer.lr_schedule existed
    torch.save(state, path)
    resumed = cosine_trainer(tmp_path / "b", checkpoint_every=3)
    resumed.resume()
    resumed.fit()
    assert logged_lrs(resumed) == pytest.approx(logged_lrs(uninterrupted), rel=1e-12, abs=1e-15)


def plain_model() -> KoopmanResNetBKLM:
    """No dropout and no Koopman terms: a batch's gradient is the mean of its windows' gradients."""
    torch.manual_seed(0)
    return KoopmanResNetBKLM(VOCAB, d_model=16, n_layers=2, n_seq=16, num_experts=2, dropout=0.0, koopman=None)


def one_step(batch_size: int, grad_accum_steps: int) -> HybridTrainer:
    tokens = stream(1, 16 * 40 + 1)
    train = TokenBatches(tokens, n_seq=16, batch_size=batch_size, shuffle=False)
    # No clipping: rescaling the gradient to a fixed norm would hide a wrong scale.
    options = TrainerOptions(epochs=1, max_steps=1, lr=3e-3, grad_clip=1e9, grad_accum_steps=grad_accum_steps,
                             log_every=1, layerwise_eval=False)
    trainer = HybridTrainer(plain_model(), train, train, options)
    trainer.fit()
    return trainer


def test_two_micro_batches_of_four_are_one_batch_of_eight():
    accumulated, whole = one_step(4, 2), one_step(8, 1)
    assert accumulated.step == whole.step == 1 and accumulated.batch_in_epoch == 2
    for (name, a), b in zip(accumulated.model.named_parameters(), whole.model.parameters(), strict=True):
        # The gradient itself (Adam's first step barely depends on its scale): summed micro-batch losses / n.
        if b.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-6, msg=name)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    assert accumulated.summary["tokens"] == whole.summary["tokens"] == 8 * 16


def test_steps_count_optimiser_steps_with_accumulation():
    trainer = logging_every_step(make_trainer(epochs=2, grad_accum_steps=3))
    assert len(trainer.train_batches) == 10 and trainer.total_steps == 8  # per epoch: 3 of three, then one
    trainer.fit()
    assert trainer.step == 8 and trainer.epoch == 2
    assert [s for s, m in trainer.history if "train/loss_lm" in m] == list(range(1, 9))


@pytest.mark.parametrize("override, phrases", [
    ("trainer.warmup_steps=-1", ["trainer.warmup_steps=-1", ">= 0"]),
    ("trainer.grad_accum_steps=0", ["trainer.grad_accum_steps=0", "> 0"]),
    ("trainer.min_lr=0.5", ["trainer.min_lr=0.5", "<= trainer.lr=0.001"]),
    ("trainer.lr_schedule=linear", ["trainer.lr_schedule='linear'", "constant, cosine"]),
])
def test_bad_schedule_settings_are_config_errors(override, phrases):
    with pytest.raises(ConfigError) as err:
        settings_of(compose_kbk([override]))
    assert all(p in str(err.value) for p in phrases), str(err.value)


def test_a_bad_schedule_setting_is_one_line_from_the_command_line(tmp_path):
    outputs = tmp_path / "outputs"
    proc = subprocess.run(kbk_command([*TINY, "trainer.min_lr=0.5", f"paths.outputs={outputs}"]), capture_output=True,
                          text=True, env=clean_env(), cwd=PROJECT_ROOT, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("kbk: error: trainer.min_lr=0.5 is not allowed")
    assert not outputs.exists() or not any(p.is_file() for p in outputs.rglob("*"))
