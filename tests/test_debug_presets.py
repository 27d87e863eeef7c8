"""The debug presets (`debug=fast|overfit|profile|anomaly`, conf/debug/) and the trainer settings they set:
`trainer.overfit_batches`, `trainer.profile_steps`, `trainer.detect_anomaly`."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY, TINY_DATA, compose_kbk, one_torch_thread
from test_run import run_in_process
from test_trainer import make_trainer

from kbk import build
from kbk.config import settings_of
from kbk.errors import ConfigError
from kbk.identity import run_hash
from kbk.training.trainer import HybridTrainer, optimizer_steps


@pytest.mark.parametrize("preset, expected", [
    ("fast", {"trainer.max_steps": 5, "trainer.eval_batches": 1, "tracking.backend": "none"}),
    ("overfit", {"trainer.overfit_batches": 1, "tracking.backend": "none"}),
    ("profile", {"trainer.profile_steps": 10, "tracking.backend": "none"}),
    ("anomaly", {"trainer.detect_anomaly": True}),
])
def test_each_preset_sets_what_it_promises(preset, expected):
    cfg = compose_kbk([f"debug={preset}"])
    settings_of(cfg)  # in range
    for key, value in expected.items():
        section, name = key.split(".")
        assert cfg[section][name] == value, key


def test_an_experiment_preset_and_the_command_line_override_a_debug_preset():
    cfg = compose_kbk(["debug=fast", "experiment=seed_colab", "trainer.max_steps=7"])
    assert cfg.trainer.max_steps == 7 and cfg.trainer.eval_batches == 1 and cfg.model.n_seq == 128


def test_the_defaults_and_the_settings_that_compute_nothing_new_keep_the_run_hash():
    plain = compose_kbk(list(TINY))
    assert run_hash(compose_kbk([*TINY, "trainer.profile_steps=3", "trainer.detect_anomaly=true",
                                 "trainer.save_best=true"])) == run_hash(plain)
    assert run_hash(compose_kbk([*TINY, "trainer.overfit_batches=1"])) != run_hash(plain)


@pytest.mark.parametrize("override", ["trainer.overfit_batches=-1", "trainer.profile_steps=-2"])
def test_out_of_range_debug_settings_name_the_key(override):
    with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
        settings_of(compose_kbk([override]))


def test_fast_runs_a_config_end_to_end_in_a_few_steps_without_tracking(tmp_path, kbk_cli):
    result = kbk_cli(["debug=fast", *TINY_DATA, f"paths.outputs={tmp_path}"])
    assert result.returncode == 0, result
    (summary_file,) = tmp_path.glob("runs/*/*/summary.json")
    summary = json.loads(summary_file.read_text())
    assert summary["steps"] == 5 and summary["koopman/layerwise_tokens"] <= 256 + 127  # whole windows of 128
    assert not list(tmp_path.glob("mlflow.db")), "debug=fast tracks nothing"


def overfit_run(overfit_batches: int, steps: int = 150) -> list[float]:
    """The training LM loss of each step of the tiny model (Koopman off) under debug=overfit."""
    cfg = settings_of(compose_kbk([*TINY, "debug=overfit", "koopman=off", f"trainer.max_steps={steps}",
                                   f"trainer.overfit_batches={overfit_batches}", "trainer.eval_every=1000"]))
    torch.manual_seed(0)
    data = build.corpus(cfg)
    train, val = build.batches(cfg, data)
    options = build.trainer_options(cfg)
    trainer = HybridTrainer(build.model(cfg, data.vocab_size), train, val, options,
                            build.schedule(cfg, optimizer_steps(len(train), options)))
    with one_torch_thread():
        trainer.fit()
    return [m["train/loss_lm"] for _, m in trainer.history if "train/loss_lm" in m]


def test_overfit_drives_the_loss_of_one_repeated_batch_towards_zero():
    losses = overfit_run(1)
    assert losses[0] > 3.0 and min(losses[-10:]) < 0.3, losses[-10:]
    # Every batch instead of one: the loss cannot fall below the data's entropy (about 3.2 nats here).
    assert min(overfit_run(0, steps=40)[-5:]) > 2.5


def test_profile_writes_the_trace_and_the_table_into_the_run_folder(tmp_path):
    job = tmp_path / "job"
    run_in_process([*TINY, "debug=profile", "trainer.profile_steps=3", "trainer.max_steps=5",
                    f"paths.outputs={tmp_path / 'outputs'}"], job)
    trace = json.loads((job / "profile" / "trace.json").read_text())
    assert any("aten::" in str(e.get("name")) for e in trace["traceEvents"])
    table = (job / "profile" / "key_averages.txt").read_text()
    assert "Self CPU" in table and "aten::" in table


class NaNInBackward(torch.autograd.Function):
    """Identity forward, NaN gradient: a bug that only the backward pass shows."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def trainer_with_nan_in_backward(**options) -> HybridTrainer:
    trainer = make_trainer(max_steps=2, layerwise_eval=False, **options)
    trainer.model.token_embedding.register_forward_hook(lambda module, args, out: NaNInBackward.apply(out))
    return trainer


def test_anomaly_detection_names_the_operation_whose_backward_made_the_nan():
    with pytest.warns(UserWarning, match="Traceback of forward call that caused the error"), \
            pytest.raises(RuntimeError, match="NaNInBackwardBackward.* returned nan values"):
        trainer_with_nan_in_backward(detect_anomaly=True).fit()
    assert not torch.is_anomaly_enabled()  # for the run only


def test_without_anomaly_detection_the_nan_passes_silently():
    trainer = trainer_with_nan_in_backward()
    trainer.fit()  # the NaN reaches the weights; nothing says where it came from
    assert not torch.isfinite(trainer.model.token_embedding.weight).all()
