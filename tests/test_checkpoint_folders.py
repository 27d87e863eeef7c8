"""Checkpoints in the run's own folder, found by config hash through `outputs/checkpoints/<hash>/` (an older store's
`last.pt` there still resumes), and `trainer.keep_checkpoint`: what a run leaves once it has finished or its trial
was pruned, while a stopped run keeps its last checkpoint. Real in-process runs of the tiny config."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess

import optuna
import pytest
import torch
from conftest import TINY, artifact_paths, clean_env, compose_kbk, kbk_command, mlflow_runs
from test_run import run_in_process

from kbk import build, identity
from kbk.config import settings_of
from kbk.errors import ConfigError
from kbk.paths import PROJECT_ROOT
from kbk.sweep.optuna_sweeper import trial_retention
from kbk.tracking.resume import checkpoint_folder, read_run_record


def step_of(checkpoint) -> int:
    return torch.load(checkpoint, weights_only=False)["position"]["step"]


def index_of(outputs):
    (index,) = (outputs / "checkpoints").iterdir()
    return index


class StopAt:
    """Raises `exception` at the start of step `step` (after the checkpoint at step - 1): a run stopped mid-way."""

    def __init__(self, step: int, exception: BaseException) -> None:
        self.step, self.exception = step, exception

    def on_step_end(self, trainer, metrics) -> None:
        if trainer.step == self.step:
            raise self.exception

    def on_evaluation(self, trainer, metrics) -> None:
        pass


@pytest.fixture
def stop_at(monkeypatch):
    """`stop_at(9, KeyboardInterrupt())`: the next run of kbk.run stops so at step 9 (its checkpoint: step 8)."""
    original = build.callbacks

    def arm(step: int, exception: BaseException) -> None:
        monkeypatch.setattr(build, "callbacks", lambda settings, output_dir: [*original(settings, output_dir),
                                                                              StopAt(step, exception)])
    yield arm
    monkeypatch.setattr(build, "callbacks", original)


@pytest.fixture
def kbk_lines(caplog):
    """What kbk.run says (its `kbk` logger) in this test."""
    caplog.set_level(logging.INFO, logger="kbk")
    return caplog


def test_checkpoints_are_in_the_run_folder_and_the_config_index_points_at_them(tmp_path):
    outputs = tmp_path / "outputs"
    job = outputs / "runs" / "kbk" / "first"
    run_in_process([*TINY, "tracking=none", f"paths.outputs={outputs}"], job)
    assert step_of(job / "checkpoints" / "last.pt") == 12
    index = index_of(outputs)
    assert index.name == identity.run_hash(compose_kbk([*TINY, "tracking=none"]))
    assert not list(index.glob("*.pt"))  # the index holds the lock and run.json only
    record = read_run_record(index)
    assert record["checkpoint_dir"] == "../../runs/kbk/first/checkpoints"  # relative: a moved outputs folder resumes
    assert checkpoint_folder(index) == job / "checkpoints"
    beside = read_run_record(job / "checkpoints")
    assert beside["config_hash"] == index.name and beside["ended"] == "finished"


def test_a_stopped_run_keeps_its_checkpoint_and_resumes_writing_in_the_same_folder(tmp_path, stop_at):
    """One run, one folder: the resumed process (its own run folder, for its .hydra and log) writes its
    checkpoints where the checkpoint it continued is; a stop leaves last.pt even with none_after_finish."""
    outputs = tmp_path / "outputs"
    args = [*TINY, "tracking=none", f"paths.outputs={outputs}", "trainer.keep_checkpoint=none_after_finish"]
    first, second = outputs / "runs" / "a", outputs / "runs" / "b"
    stop_at(9, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        run_in_process(args, first)
    assert step_of(first / "checkpoints" / "last.pt") == 8
    assert "ended" not in read_run_record(first / "checkpoints")

    stop_at(10**6, KeyboardInterrupt())  # never
    run_in_process([*args, "trainer.resume=true"], second)
    assert not (second / "checkpoints").exists()
    assert checkpoint_folder(index_of(outputs)) == first / "checkpoints"
    assert read_run_record(first / "checkpoints")["ended"] == "finished"
    assert not list((first / "checkpoints").glob("*.pt"))  # finished: none_after_finish dropped them
    assert json.loads((second / "summary.json").read_text())["steps"] == 12


def test_a_checkpoint_of_an_older_store_in_the_index_folder_still_resumes(tmp_path, stop_at, kbk_lines):
    """A store from before run folders: last.pt and run.json (no checkpoint_dir) in outputs/checkpoints/<hash>/.
    trainer.resume=true continues it and goes on writing there."""
    outputs = tmp_path / "outputs"
    args = [*TINY, "tracking=none", f"paths.outputs={outputs}"]
    stop_at(9, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        run_in_process(args, outputs / "runs" / "a")
    index = index_of(outputs)
    shutil.move(outputs / "runs" / "a" / "checkpoints" / "last.pt", index / "last.pt")  # the older layout
    (index / "run.json").write_text(json.dumps({"run_id": None, "output_dir": str(outputs / "runs" / "a")}))

    stop_at(10**6, KeyboardInterrupt())
    run_in_process([*args, "trainer.resume=true"], outputs / "runs" / "b")
    assert f"resuming {index / 'last.pt'} at step 8" in kbk_lines.text
    assert step_of(index / "last.pt") == 12
    assert checkpoint_folder(index) == index and not (outputs / "runs" / "b" / "checkpoints").exists()


@pytest.mark.parametrize(("keep", "left"), [("last", ["best.pt", "last.pt"]), ("best", ["best.pt"]),
                                             ("none_after_finish", [])])
def test_keep_checkpoint_says_what_a_finished_run_leaves(tmp_path, keep, left):
    outputs = tmp_path / "outputs"
    run_in_process([*TINY, "tracking=none", f"paths.outputs={outputs}", "trainer.save_best=true",
                    f"trainer.keep_checkpoint={keep}"], tmp_path / "job")
    folder = tmp_path / "job" / "checkpoints"
    assert sorted(p.name for p in folder.glob("*.pt")) == left
    assert read_run_record(folder)["ended"] == "finished"


def test_after_none_after_finish_a_resume_trains_from_the_start(tmp_path, kbk_lines):
    outputs = tmp_path / "outputs"
    args = [*TINY, "tracking=none", f"paths.outputs={outputs}", "trainer.keep_checkpoint=none_after_finish"]
    first = run_in_process(args, tmp_path / "a")
    assert run_in_process([*args, "trainer.resume=true"], tmp_path / "b") == first
    assert "trainer.resume=true: no checkpoint of this config" in kbk_lines.text
    assert checkpoint_folder(index_of(outputs)) == tmp_path / "b" / "checkpoints"


@pytest.mark.parametrize(("keep", "left"), [("none_after_finish", []), ("last", ["last.pt"])])
def test_a_pruned_trial_is_over_its_checkpoints_go_as_keep_checkpoint_says(tmp_path, stop_at, keep, left):
    stop_at(9, optuna.TrialPruned("pruned by MedianPruner at step 8"))
    with pytest.raises(optuna.TrialPruned):
        run_in_process([*TINY, "tracking=none", f"paths.outputs={tmp_path / 'outputs'}",
                        f"trainer.keep_checkpoint={keep}"], tmp_path / "job")
    folder = tmp_path / "job" / "checkpoints"
    assert [p.name for p in folder.glob("*.pt")] == left
    assert read_run_record(folder)["ended"] == "pruned"  # never resumed: kbk.clean may delete what is left


def test_log_checkpoint_stores_the_checkpoint_in_mlflow_before_the_local_copy_goes(tmp_path, mlflow_store):
    outputs = tmp_path / "outputs"
    db = mlflow_store(outputs)
    run_in_process([*TINY, f"paths.outputs={outputs}", "trainer.log_checkpoint=true",
                    "trainer.keep_checkpoint=none_after_finish"], tmp_path / "job")
    (run,) = mlflow_runs(db)
    assert run.info.status == "FINISHED"
    assert "checkpoints/last.pt" in artifact_paths(db, run.info.run_id)
    assert not list((tmp_path / "job" / "checkpoints").glob("*.pt"))
    assert run.data.params["trainer.keep_checkpoint"] == "none_after_finish"


def test_evaluating_a_run_id_takes_that_runs_own_checkpoint_not_a_later_runs(tmp_path, mlflow_store):
    from kbk.evaluate import locate

    outputs = tmp_path / "outputs"
    db = mlflow_store(outputs)
    for name in ("first", "second"):  # the same config twice: each run keeps its own checkpoint
        run_in_process([*TINY, f"paths.outputs={outputs}"], outputs / "runs" / name, write_hydra_dir=True)
    first, second = mlflow_runs(db)
    for run, name in ((first, "first"), (second, "second")):
        checkpoint, _, _ = locate(run.info.run_id, None, f"sqlite:///{db}", tmp_path / "scratch")
        assert checkpoint == outputs / "runs" / name / "checkpoints" / "last.pt"


def test_keep_checkpoint_leaves_the_config_hash_as_it_was():
    default = identity.run_hash(compose_kbk(TINY))
    assert all(identity.run_hash(compose_kbk([*TINY, f"trainer.keep_checkpoint={keep}", "trainer.save_best=true"]))
               == default for keep in ("last", "best", "none_after_finish"))


@pytest.mark.parametrize(("overrides", "message"), [
    (["trainer.keep_checkpoint=best"], "trainer.keep_checkpoint='best' is not allowed: it must be last or "
                                       "none_after_finish, or best with trainer.save_best=true"),
    (["trainer.keep_checkpoint=first"], "trainer.keep_checkpoint='first' is not allowed: it must be one of last, "
                                        "best, none_after_finish"),
])
def test_a_bad_keep_checkpoint_is_one_line_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as caught:
        settings_of(compose_kbk(overrides))
    assert message in str(caught.value)


def test_sweep_trials_default_to_none_after_finish_unless_the_sweep_sets_it():
    preset = ["hparams_search=koopman_dim_grid"]
    assert trial_retention(compose_kbk(preset)) == ["trainer.keep_checkpoint=none_after_finish"]
    assert trial_retention(compose_kbk([*preset, "trainer.keep_checkpoint=best", "trainer.save_best=true"])) == []
    # The user's own value is a fixed override of the sweep, after this one in each trial's overrides: it wins.
    trial = compose_kbk([*preset, *trial_retention(compose_kbk(preset)), "trainer.keep_checkpoint=last"])
    assert trial.trainer.keep_checkpoint == "last"


@pytest.mark.slow
def test_a_sweeps_finished_trials_leave_no_checkpoint(tmp_path, mlflow_store):
    outputs = tmp_path / "outputs"
    mlflow_store(outputs)
    proc = subprocess.run(kbk_command(["-m", "hydra/sweeper=kbk_optuna", "hydra/sweeper/sampler=grid", *TINY,
                                       "koopman.dim=8,16", "hydra.sweeper.study_name=keep",
                                       f"paths.outputs={outputs}"]),
                          capture_output=True, text=True, env=clean_env(), cwd=PROJECT_ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [read_run_record(f) for f in outputs.rglob("checkpoints") if (f.parent / ".hydra").is_dir()]
    assert len(records) == 2 and all(r["ended"] == "finished" for r in records)
    assert not list(outputs.rglob("*.pt"))
    assert {r.data.params["trainer.keep_checkpoint"] for r in mlflow_runs(outputs / "mlflow.db")
            if "optuna.trial_number" in r.data.tags} == {"none_after_finish"}
