"""Kill windows: whenever a run or a sweep is stopped, no MLflow run stays RUNNING and no finished work is lost.

- SIGKILL before the first checkpoint: the next start of the same config ends the orphan run KILLED, says that it
  found no checkpoint, and removes a half-written checkpoint file.
- Two processes on one config: the second is refused with one line (the checkpoint folder is locked).
- A signal while a finished run stores its artifacts: the run ends FINISHED with them; one line, no traceback.
- A sweeper killed after a trial's job finished but before it told the result: the next sweeper keeps the result
  (the job recorded it on its trial) instead of training the point again.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess

import optuna
import pytest
from conftest import (
    TINY,
    artifact_paths,
    clean_env,
    compose_kbk,
    kbk_command,
    latest_checkpoint,
    mlflow_runs,
    one_torch_thread,
)
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from kbk.paths import PROJECT_ROOT

#: Training that goes on until it is stopped, with no checkpoint before (no evaluation; a first epoch of 31,250 steps,
#: minutes): however long its MLflow run takes to be created (on a thread while it trains; 15 s on a loaded machine),
#: it is still training, uncheckpointed, then.
UNCHECKPOINTED = [*TINY, "data.n_train_tokens=2000000", "trainer.max_steps=100000000", "trainer.eval_every=100000000"]


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(kbk_command(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=clean_env(), cwd=PROJECT_ROOT)


def wait_until_training(proc: subprocess.Popen) -> None:
    """Read the run's output until its MLflow run exists and training starts."""
    for line in proc.stdout:
        if re.search(r"MLflow run [0-9a-f]{32} (created )?in ", line):  # a new run is created while it trains
            return
    raise AssertionError(f"the run ended (exit {proc.wait()}) before training:\n{proc.stderr.read()[-3000:]}")


@pytest.mark.slow
def test_sigkill_before_the_first_checkpoint_leaves_no_running_run(tmp_path, mlflow_store):
    outputs = tmp_path / "outputs"
    db = mlflow_store(outputs)
    proc = start([*UNCHECKPOINTED, f"paths.outputs={outputs}"])
    try:
        wait_until_training(proc)
    finally:
        proc.kill()
        proc.wait()
    (orphan,) = mlflow_runs(db)
    assert orphan.info.status == "RUNNING"  # what SIGKILL leaves: nothing in the process can end it
    first = latest_checkpoint(outputs)
    assert not first.exists()
    partial = first.parent / ".last.pt.killed.tmp"  # what a kill during the first checkpoint's write leaves
    partial.write_bytes(b"half a checkpoint")

    resumed = start([*UNCHECKPOINTED, f"paths.outputs={outputs}", "trainer.resume=true"])
    said = []
    try:
        for line in resumed.stdout:  # the orphan is ended before training starts; then this one is stopped too
            said.append(line)
            if "left RUNNING by a killed process" in line:
                break
    finally:
        resumed.send_signal(signal.SIGTERM)
    stdout, stderr = resumed.communicate(timeout=120)
    said = "".join(said) + stdout
    assert resumed.returncode == 143, stderr[-3000:]
    assert "trainer.resume=true: no checkpoint of this config" in said
    assert f"MLflow run {orphan.info.run_id} of this config was left RUNNING by a killed process: ended KILLED" in said
    assert not partial.exists()
    runs = {r.info.run_id: r for r in mlflow_runs(db)}
    assert runs[orphan.info.run_id].info.status == "KILLED"
    assert "killed" in runs[orphan.info.run_id].data.tags["kbk.end_reason"]
    (again,) = (r for r in runs.values() if r.info.run_id != orphan.info.run_id)
    assert again.info.status == "KILLED" and again.data.tags["kbk.end_reason"] == "stopped by SIGTERM"


@pytest.mark.slow
def test_a_second_process_on_the_same_config_is_refused_with_one_line(tmp_path, mlflow_store):
    outputs = tmp_path / "outputs"
    db = mlflow_store(outputs)
    first = start([*UNCHECKPOINTED, f"paths.outputs={outputs}"])
    try:
        wait_until_training(first)
        second = subprocess.run(kbk_command([*UNCHECKPOINTED, f"paths.outputs={outputs}"]), capture_output=True,
                                text=True, env=clean_env(), cwd=PROJECT_ROOT, timeout=300)
        assert len(mlflow_runs(db)) == 1  # the second made no run
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert second.returncode == 2 and len(lines) == 1, second.stderr[-3000:]
    (run,) = mlflow_runs(db)
    assert lines[0].startswith(f"kbk: error: another kbk process is training this same config now (MLflow run "
                               f"{run.info.run_id})")
    assert run.info.status == "KILLED"  # the first, stopped by SIGTERM


def test_a_signal_while_artifacts_are_stored_ends_the_run_finished_with_them(tmp_path, mlflow_store, monkeypatch,
                                                                              capsys):
    """SIGINT arrives in the middle of the artifact uploads after training: they complete, the run ends FINISHED,
    and the process stops with one line (exit 130) instead of a traceback and a KILLED run."""
    import kbk.run
    before = signal.getsignal(signal.SIGINT)  # the default, or SIG_IGN in a process started in the background

    outputs = tmp_path / "outputs"
    db = mlflow_store(outputs)
    real_log_artifacts = kbk.run.log_artifacts

    def interrupted_midway(tracker, *args, **kwargs):
        tracker.log_text("before the signal", "before.txt")
        os.kill(os.getpid(), signal.SIGINT)
        real_log_artifacts(tracker, *args, **kwargs)

    monkeypatch.setattr(kbk.run, "log_artifacts", interrupted_midway)
    cfg = compose_kbk([*TINY, f"paths.outputs={outputs}"], hydra=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    with one_torch_thread(), pytest.raises(SystemExit) as stop:
        kbk.run.run(cfg, tmp_path / "job")
    assert stop.value.code == 130
    assert "stopped by SIGINT after training finished" in capsys.readouterr().err
    (run,) = mlflow_runs(db)
    assert run.info.status == "FINISHED", run.data.tags.get("kbk.end_reason")
    assert {"before.txt", "plots/training_curves.png", "summary.json"} <= artifact_paths(db, run.info.run_id)
    assert signal.getsignal(signal.SIGINT) is before  # handlers put back


def test_a_finished_trial_of_a_killed_sweeper_keeps_its_result(tmp_path, monkeypatch):
    """The job records its objective on its trial; the sweeper that should have told it died (the trial is RUNNING,
    owned by a dead process). The next sweeper tells it COMPLETE from the record and does not queue it again;
    a RUNNING trial without a record is failed and re-queued as before."""
    from kbk.sweep import ENV_STORAGE, ENV_STUDY, ENV_TRIAL
    from kbk.sweep.engine import RECOVERED_ATTR, STALE_ATTR, SweepEngine
    from kbk.sweep.heartbeat import OWNER_ATTR, WORKER_PREFIX, Worker
    from kbk.sweep.space import parse_space
    from kbk.sweep.storage import open_storage
    from kbk.sweep.trial import record_result_from_env

    journal = str(tmp_path / "s.journal")
    study = optuna.create_study(storage=open_storage(journal), study_name="s",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    space = parse_space({"x": "choice(1,2,3)"})
    dead = subprocess.Popen(["true"])
    dead.wait()
    dead_worker = Worker()
    dead_worker.pid, dead_worker._start_ticks = dead.pid, None
    study.set_user_attr(WORKER_PREFIX + dead_worker.id, dead_worker.info().as_attr())
    finished, cut_off = (study.ask(fixed_distributions=space.distributions) for _ in range(2))
    for trial in (finished, cut_off):
        study._storage.set_trial_user_attr(trial._trial_id, OWNER_ATTR, dead_worker.id)
    monkeypatch.setenv(ENV_STORAGE, journal)
    monkeypatch.setenv(ENV_STUDY, "s")
    monkeypatch.setenv(ENV_TRIAL, str(finished.number))
    record_result_from_env(42.5)  # what the finished trial's job did before the sweeper was killed

    engine = SweepEngine(study, space, n_trials=3)
    assert engine.recover_stale() == [cut_off.number]  # only the unfinished one is failed (and its run settled)
    trials = {t.number: t for t in study.get_trials()}
    kept = trials[finished.number]
    assert kept.state.name == "COMPLETE" and kept.value == 42.5 and RECOVERED_ATTR in kept.user_attrs
    assert trials[cut_off.number].state.name == "FAIL" and STALE_ATTR in trials[cut_off.number].user_attrs
    queued = [t for t in trials.values() if t.state.name == "WAITING"]
    assert [t.params.get("x", t.system_attrs.get("fixed_params", {}).get("x")) for t in queued] == [
        cut_off.params["x"]]


def test_an_interrupted_sweeper_keeps_the_result_a_trial_recorded(tmp_path, monkeypatch):
    """Ctrl-C reaches the sweeper after its trial's job recorded its result: the trial is COMPLETE, not re-queued."""
    from kbk.sweep import ENV_STORAGE, ENV_STUDY, ENV_TRIAL
    from kbk.sweep.engine import SweepEngine
    from kbk.sweep.space import parse_space
    from kbk.sweep.storage import open_storage
    from kbk.sweep.trial import record_result_from_env

    journal = str(tmp_path / "s.journal")
    study = optuna.create_study(storage=open_storage(journal), study_name="s")
    engine = SweepEngine(study, parse_space({"x": "choice(1,2)"}), n_trials=2)
    (trial,) = engine.claim(1)
    engine.in_flight[trial.number] = trial
    for key, value in ((ENV_STORAGE, journal), (ENV_STUDY, "s"), (ENV_TRIAL, str(trial.number))):
        monkeypatch.setenv(key, value)
    record_result_from_env(7.0)
    assert engine.release_in_flight("interrupted") == []
    (told,) = [t for t in study.get_trials() if t.number == trial.number]
    assert told.state.name == "COMPLETE" and told.value == 7.0
    assert not [t for t in study.get_trials() if t.state.name == "WAITING"]


def test_partial_checkpoints_are_removed_and_the_folder_lock_is_exclusive(tmp_path):
    from kbk.errors import CheckpointError
    from kbk.training.checkpoint import CheckpointFolderLock, remove_partial_checkpoints, save_checkpoint

    save_checkpoint({"step": 1}, tmp_path / "last.pt")
    (tmp_path / ".last.pt.abc123.tmp").write_bytes(b"cut short")
    assert [p.name for p in remove_partial_checkpoints(tmp_path)] == [".last.pt.abc123.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    with CheckpointFolderLock(tmp_path):
        with pytest.raises(CheckpointError, match="another kbk process is training this same config"):
            CheckpointFolderLock(tmp_path)
    with CheckpointFolderLock(tmp_path):  # released: free again
        pass


def test_run_json_of_a_killed_writer_reads_as_empty(tmp_path):
    from kbk.tracking.resume import read_run_record

    (tmp_path / "run.json").write_text('{"run_id": "ab')
    assert read_run_record(tmp_path) == {} and read_run_record(tmp_path / "missing") == {}
