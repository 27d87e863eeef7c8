import math

import pytest
import torch

from kbk.data.batching import TokenBatches
from kbk.models.koopman_lm import KoopmanOptions, KoopmanResNetBKLM
from kbk.tracking.base import NullTracker
from kbk.training.callbacks import ProgressPrinter, ReportMetric
from kbk.training.checkpoint import save_checkpoint
from kbk.training.schedules import KoopmanWeightSchedule
from kbk.training.trainer import HybridTrainer, TrainerOptions, TrainingDiverged

VOCAB = 40


def stream(seed: int, n: int) -> torch.Tensor:
    # A learnable stream: token t+1 = (3 * token t + 1) mod VOCAB, with occasional random resets.
    g = torch.Generator().manual_seed(seed)
    out = [0]
    for _ in range(n - 1):
        out.append(int(torch.randint(0, VOCAB, (1,), generator=g)) if torch.rand(1, generator=g) < 0.1
                   else (3 * out[-1] + 1) % VOCAB)
    return torch.tensor(out)


def make_trainer(tmp_path=None, operator_update="both", dim=12, tracker=None, epochs=2, max_steps=None,
                 schedule=None, **opts):
    torch.manual_seed(0)
    model = KoopmanResNetBKLM(VOCAB, d_model=16, n_layers=2, n_seq=16, num_experts=2, dropout=0.1,
                              koopman=KoopmanOptions(dim=dim, operator_update=operator_update, sample_tokens=20,
                                                     dmd={"buffer_size": 30, "alpha": 0.5}))
    train = TokenBatches(stream(1, 16 * 40 + 1), n_seq=16, batch_size=4, seed=5)
    val = TokenBatches(stream(2, 16 * 8 + 1), n_seq=16, batch_size=4, shuffle=False)
    opts.setdefault("lr", 3e-3)
    options = TrainerOptions(epochs=epochs, max_steps=max_steps, eval_every=4, log_every=2, **opts)
    schedule = schedule or KoopmanWeightSchedule("linear", 0.0, 0.5, warmup=3, total=15, unit="step")
    path = tmp_path / "ckpt.pt" if tmp_path is not None else None
    return HybridTrainer(model, train, val, options, schedule, tracker=tracker, checkpoint_path=path)


def without_timings(history):
    timing = lambda k: k.startswith("perf/") or k.endswith("time_s")  # noqa: E731
    return [(step, {k: v for k, v in m.items() if not timing(k)}) for step, m in history]


class CrashAt(NullTracker):
    """A tracker that raises once training logs past `step`: a process dying mid-run."""

    def __init__(self, step):
        super().__init__()
        self.crash_step = step

    def log_metrics(self, metrics, step):
        if step > self.crash_step:
            raise KeyboardInterrupt
        super().log_metrics(metrics, step)


def test_training_learns_and_logs_the_contract_metric_names():
    trainer = make_trainer(epochs=4, lr=1e-2)
    summary = trainer.fit()
    first_eval = next(m for _, m in trainer.history if "val/loss" in m)
    assert summary["val/loss"] < first_eval["val/loss"] - 0.3
    assert summary["val/ppl"] == pytest.approx(math.exp(summary["val/loss"]))
    logged = set().union(*(m.keys() for _, m in trainer.history))
    for name in ("train/loss_lm", "train/loss_koopman", "train/koopman_weight", "train/loss_total", "val/loss",
                 "val/ppl", "val/ppl_koopman", "perf/tokens_per_s", "perf/step_ms", "koopman/0/spectral_radius",
                 "koopman/1/state_rel_err", "koopman/0/val_ppl_skip_only", "koopman/0/val_ppl_koopman_only"):
        assert name in logged, name
    assert len(trainer.epoch_table) == 4 and trainer.epoch_table[0]["epoch"] == 1.0
    assert summary["events/dmd_accepted"] > 0
    val_steps = [s for s, m in trainer.history if "val/loss" in m]
    assert len(val_steps) == len(set(val_steps))  # the final evaluation does not repeat the last periodic one


def test_weight_follows_the_schedule_and_the_koopman_loss_starts_after_warmup():
    trainer = make_trainer(max_steps=8)
    steps = []
    for (x, y) in trainer.train_batches.epoch(0):
        m = trainer.train_step(x, y)
        steps.append(m)
        trainer.step += 1
        if trainer.step == 8:
            break
    assert [s["train/koopman_weight"] for s in steps[:3]] == [0.0, 0.0, 0.0]
    assert all(s["train/loss_koopman"] == 0.0 for s in steps[:3])
    assert all(s["train/loss_koopman"] > 0.0 for s in steps[3:])
    assert steps[5]["train/koopman_weight"] == pytest.approx(0.5 * (5 - 3) / 12)


def test_resumed_run_reproduces_the_uninterrupted_run_exactly(tmp_path):
    uninterrupted = make_trainer(tmp_path / "a", checkpoint_every=3)
    expected = uninterrupted.fit()

    crashed = make_trainer(tmp_path / "b", checkpoint_every=3, tracker=CrashAt(13))
    with pytest.raises(KeyboardInterrupt):
        crashed.fit()
    resumed = make_trainer(tmp_path / "b", checkpoint_every=3)
    resumed.resume()
    assert resumed.step == 12  # the last checkpoint before the crash
    got = resumed.fit()
    assert got["val/loss"] == expected["val/loss"]
    assert got["val/ppl_koopman"] == expected["val/ppl_koopman"]
    assert without_timings(resumed.history) == without_timings(uninterrupted.history)  # every metric, every step
    for a, b in zip(resumed.model.state_dict().values(), uninterrupted.model.state_dict().values(), strict=True):
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def test_evaluation_cadence_does_not_change_the_training_trajectory():
    a = make_trainer(max_steps=10)
    a.options.eval_every = 3
    a.fit()
    b = make_trainer(max_steps=10)
    b.options.eval_every = None
    b.fit()
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_nan_koopman_loss_disables_koopman_learning_and_training_goes_on():
    trainer = make_trainer(max_steps=8)
    with torch.no_grad():
        trainer.model.blocks[0].koopman.lift[0].weight.fill_(float("nan"))
    summary = trainer.fit()
    assert trainer.events["koopman_disabled"] == 1 and not trainer.koopman_enabled
    assert math.isfinite(summary["val/loss"])
    late = [m for s, m in trainer.history if "train/koopman_weight" in m and s > 5]
    assert all(m["train/koopman_weight"] == 0.0 for m in late)


def test_koopman_loss_above_threshold_cuts_the_weight_tenfold():
    trainer = make_trainer(max_steps=6, fallback_threshold=0.0)
    trainer.fit()
    assert trainer.events["koopman_weight_cut"] == 3  # steps 3, 4, 5 have Koopman on
    schedule = trainer.schedule
    logged = {s: m["train/koopman_weight"] for s, m in trainer.history if "train/koopman_weight" in m}
    assert logged[6] == pytest.approx((schedule.weight(4) + schedule.weight(5)) / 2 / 10)


def test_non_finite_lm_loss_skips_then_stops_with_step_and_reason():
    trainer = make_trainer(max_nan_steps=3)
    with torch.no_grad():
        trainer.model.lm_head.bias.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match=r"3 steps in a row \(last at step 2\)"):
        trainer.fit()
    assert trainer.events["nan_lm_skipped"] == 3


@pytest.mark.parametrize("owner", ["gradient", "dmd", "both"])
def test_operator_owner_decides_who_writes_k(owner):
    trainer = make_trainer(operator_update=owner, max_steps=6)
    k0 = [d.operator.detach().clone() for d in trainer.model.koopman_dynamics()]
    trainer.fit()
    moved = [not torch.equal(d.operator, k) for d, k in zip(trainer.model.koopman_dynamics(), k0, strict=True)]
    assert all(moved)
    if owner == "gradient":
        assert trainer.events["dmd_accepted"] == 0
    else:
        assert trainer.events["dmd_accepted"] == 2 * 3  # two layers, three Koopman steps


def test_both_resets_the_operators_optimiser_state_after_a_dmd_write():
    trainer = make_trainer(operator_update="both", max_steps=4)
    trainer.fit()
    k = trainer.model.blocks[0].koopman.operator
    assert k not in trainer.optimizer.state  # written by DMD at the last step, so its Adam moments were dropped
    decays = {id(p): g["weight_decay"] for g in trainer.optimizer.param_groups for p in g["params"]}
    assert decays[id(k)] == 0.0


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    from kbk.errors import CheckpointError

    path = tmp_path / "ckpt.pt"
    path.write_bytes(b"not a checkpoint")
    trainer = make_trainer(tmp_path)
    with pytest.raises(CheckpointError, match="corrupt"):
        trainer.resume(path)
    save_checkpoint({"hello": 1}, path)
    with pytest.raises(CheckpointError, match="does not fit"):
        trainer.resume(path)
    other = make_trainer(dim=8)  # another koopman_dim: the shapes disagree
    save_checkpoint(other.state_dict(), path)
    with pytest.raises(CheckpointError, match="does not fit"):
        trainer.resume(path)


def test_layerwise_metrics_on_a_token_subset_equal_full_passes_over_those_windows():
    trainer = make_trainer(max_steps=6, layerwise_tokens=40)  # 40 tokens: the first 3 windows of 16
    trainer.fit()
    got = trainer.layerwise_metrics()
    assert got["koopman/layerwise_tokens"] == 48.0
    # The reference: each mode's ordinary forward pass over exactly those three windows.
    inputs, targets = next(iter(trainer.val_batches.epoch(0)))
    inputs, targets = inputs[:3], targets[:3]
    n = len(trainer.model.blocks)
    with torch.no_grad():
        for layer in range(n):
            for mode in ("koopman", "skip"):
                modes = ["standard"] * n
                modes[layer] = mode
                logits, _ = trainer.model(inputs, modes=modes)
                expected = math.exp(torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1)))
                assert got[f"koopman/{layer}/val_ppl_{mode}_only"] == pytest.approx(expected, rel=1e-6)
        logits, _ = trainer.model(inputs)
        standard = math.exp(torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1)))
        for mode in ("koopman", "skip"):  # every layer at once
            logits, _ = trainer.model(inputs, modes=[mode] * n)
            expected = math.exp(torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1)))
            assert got[f"koopman/layerwise_val_ppl_{mode}_all"] == pytest.approx(expected, rel=1e-6)
    assert got["koopman/layerwise_val_ppl"] == pytest.approx(standard, rel=1e-6)
    trainer.options.layerwise_tokens = None  # the whole validation set: 8 windows
    assert trainer.layerwise_metrics()["koopman/layerwise_tokens"] == 8 * 16


def test_terms_interval_computes_the_koopman_loss_every_nth_step_and_feeds_dmd_every_step():
    trainer = make_trainer(max_steps=9)
    trainer.model.koopman_config.terms_interval = 2
    steps = []
    for x, y in trainer.train_batches.epoch(0):
        steps.append(trainer.train_step(x, y))
        trainer.step += 1
        if trainer.step == 9:
            break
    # Koopman learning is on from step 3: the loss on even steps only (4, 6, 8), DMD's pairs on every step from 3.
    assert [s["train/loss_koopman"] > 0 for s in steps[3:]] == [False, True, False, True, False, True]
    assert all(s["train/koopman_weight"] == 0.0 for s in steps[3::2])
    assert all("perf/dmd_ms" in s for s in steps[3:])
    assert all(int(d.dmd.n_seen) == 6 * 20 for d in trainer.model.koopman_dynamics())  # 20 sampled tokens a step


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[int, dict[str, float]]] = []

    def on_evaluation(self, trainer, metrics):
        self.calls.append((trainer.step, dict(metrics)))


class StopAt(Exception):
    pass


def test_callbacks_see_every_evaluation_in_order_and_one_may_stop_the_run():
    recorder, reported, shown = Recorder(), [], []
    trainer = make_trainer(max_steps=8)
    trainer.callbacks = [ProgressPrinter(shown.append), recorder,
                         ReportMetric(lambda value, step: reported.append((step, value)), "val/loss")]
    trainer.fit()
    assert [step for step, _ in recorder.calls] == [4, 8]  # eval_every=4
    assert reported == [(step, m["val/loss"]) for step, m in recorder.calls]  # the metric asked for, not val/ppl
    assert [(s["step"], s["total_steps"], s["val/ppl"]) for s in shown] == [
        (step, 8, m["val/ppl"]) for step, m in recorder.calls]
    assert "train/loss_lm" in shown[0] and "train_seconds" in shown[0]

    def prune(value, step):
        raise StopAt(f"pruned at {step}")

    stopped = make_trainer(max_steps=8)
    stopped.callbacks = [ReportMetric(prune, "val/ppl")]
    with pytest.raises(StopAt, match="pruned at 4"):
        stopped.fit()
    assert stopped.step == 4
    ignored = make_trainer(max_steps=4)
    ignored.callbacks = [ReportMetric(prune, "perf/step_ms")]  # not an evaluation metric: nothing to report
    ignored.fit()


def test_a_model_without_koopman_parts_trains_through_the_same_contract():
    from kbk.models.config import TransformerConfig
    from kbk.models.transformer import TransformerLM

    torch.manual_seed(0)
    model = TransformerLM(VOCAB, TransformerConfig(d_model=16, n_layers=1, n_heads=2, n_seq=16))
    base = make_trainer(max_steps=4)
    trainer = HybridTrainer(model, base.train_batches, base.val_batches, base.options)
    summary = trainer.fit()
    assert not trainer.has_koopman and math.isfinite(summary["val/ppl"])
    assert not any(k.startswith("koopman/") for k in summary)
