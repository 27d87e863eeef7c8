"""A fresh run's MLflow start on a thread of its own (kbk/tracking/background_start.py, issue 11): training starts at
once, and the run still gets everything a start before training gives it, fails as clearly, and ends as it should.

Each test runs `python -m kbk.run` in a subprocess on a real SQLite store. A slow start is made by holding the store's
SQLite init lock (the one kbk's own start takes): no run can be created while a test holds it.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, clean_env, kbk_command, latest_checkpoint, metric_history, mlflow_runs
from mlflow import MlflowClient
from mlflow.entities import ViewType

from kbk.paths import PROJECT_ROOT
from kbk.tracking.resume import read_run_record
from kbk.tracking.store import _sqlite_init_lock

#: The first evaluation's line, after 4 training steps (TINY evaluates every 4) and before its checkpoint's flush.
FIRST_EVALUATION = r"step 4/12 "


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(kbk_command(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=clean_env(), cwd=PROJECT_ROOT)


def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(kbk_command(args), capture_output=True, text=True, env=clean_env(env), cwd=PROJECT_ROOT,
                          timeout=300)


def read_until(proc: subprocess.Popen, pattern: str) -> str:
    """The first line of the run's output that matches `pattern` (read as it comes)."""
    for line in proc.stdout:
        if re.search(pattern, line):
            return line
    raise AssertionError(f"no line matching {pattern!r} (exit {proc.wait()}):\n{proc.stderr.read()[-3000:]}")


def logged_values(history: list[tuple[int, dict[str, float]]]) -> dict[str, list[tuple[int, float]]]:
    values: dict[str, list[tuple[int, float]]] = {}
    for step, metrics in history:
        for key, value in metrics.items():
            values.setdefault(key, []).append((step, float(value)))
    return values


def test_training_starts_before_the_run_exists_and_the_run_gets_every_step(tmp_path, mlflow_store):
    outputs = tmp_path / "outputs"
    db = mlflow_store(outputs)
    with _sqlite_init_lock(db):
        proc = start([*TINY, f"paths.outputs={outputs}", "trainer.log_every=1"])
        try:
            read_until(proc, FIRST_EVALUATION)
            assert mlflow_runs(db) == []  # four steps trained (and evaluated), and no run yet
        except BaseException:
            proc.kill()
            raise
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    (run_info,) = mlflow_runs(db)
    run_id = run_info.info.run_id
    assert run_info.info.status == "FINISHED"
    assert f"MLflow run {run_id} created in sqlite:///{db} while training" in stdout
    # Every value the trainer logged (its history, in its last checkpoint), those of the steps before the run
    # existed included, each once; the store's other metrics are the machine's.
    checkpoint = latest_checkpoint(outputs)
    expected = logged_values(torch.load(checkpoint, weights_only=False)["history"])
    assert [step for step, _ in expected["train/loss_lm"][:4]] == [1, 2, 3, 4]  # logged before the run existed
    stored = {key for key in run_info.data.metrics if not key.startswith("system/")}
    assert stored == set(expected)
    assert {key: metric_history(db, run_id, key) for key in expected} == expected
    (index,) = (outputs / "checkpoints").iterdir()  # the config's index folder
    assert read_run_record(index)["run_id"] == read_run_record(checkpoint.parent)["run_id"] == run_id


@pytest.mark.slow
def test_a_run_started_in_the_background_records_what_a_start_before_training_records(tmp_path, mlflow_store):
    """The same config tracked twice: once resuming an untracked checkpoint (a new run, made before training, as
    every run was before) and once fresh (made while training): the same params, tags and dataset inputs."""
    outputs = tmp_path / "outputs"
    db = mlflow_store(outputs)
    common = [*TINY, f"paths.outputs={outputs}"]
    for args in ([*common, "tracking=none"], [*common, "trainer.resume=true"], common):
        done = run(args)
        assert done.returncode == 0, done.stderr[-3000:]
    before_training, in_background = mlflow_runs(db)
    assert in_background.data.params == before_training.data.params and len(in_background.data.params) > 50
    differs = {"kbk.output_dir", "mlflow.runName"}  # each run's own folder; the resumed one's name says resume
    assert {k: v for k, v in in_background.data.tags.items() if k not in differs} == {
        k: v for k, v in before_training.data.tags.items() if k not in differs}

    def inputs(run_info) -> list[tuple[str, str, str]]:
        return sorted((d.dataset.name, d.dataset.digest, d.tags[0].value) for d in run_info.inputs.dataset_inputs)

    assert inputs(in_background) == inputs(before_training) and len(inputs(in_background)) == 2


def test_a_start_that_fails_in_the_background_ends_the_job_with_one_line(tmp_path, mlflow_store):
    """The store's experiment is deleted: found by the start on its thread, after training began. The job ends as a
    start before training would have: one line, exit 2, no run, no run folder."""
    outputs = tmp_path / "outputs"
    client = MlflowClient(f"sqlite:///{mlflow_store(outputs)}")
    client.delete_experiment(client.create_experiment("kbk"))
    done = run([*TINY, f"paths.outputs={outputs}"])
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("kbk: error: Experiment 'kbk' in sqlite:///") and "is deleted" in lines[0]
    assert "ready to train" in done.stdout  # it trained meanwhile
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    assert client.search_runs(experiments, run_view_type=ViewType.ALL) == []
    assert not list((outputs / "runs").glob("*/*"))


def test_a_missing_parent_run_is_one_line_before_training(tmp_path, mlflow_store):
    """A sweep's parent run id (from the environment) that the store lacks: checked before training, as before."""
    outputs = tmp_path / "outputs"
    db = mlflow_store(outputs)
    done = run([*TINY, f"paths.outputs={outputs}"], env={"KBK_PARENT_RUN_ID": "0" * 32})
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith(f"kbk: error: Parent run {'0' * 32} is not in sqlite:///{db}")
    assert "ready to train" not in done.stdout and mlflow_runs(db) == []
    assert not list((outputs / "runs").glob("*/*"))


@pytest.mark.slow
def test_sigterm_while_the_run_is_being_created_ends_it_killed_and_it_resumes(tmp_path, mlflow_store):
    outputs = tmp_path / "outputs"
    db = mlflow_store(outputs)
    args = [*TINY, f"paths.outputs={outputs}"]
    with _sqlite_init_lock(db):
        proc = start(args)
        try:
            ready = read_until(proc, "ready to train")
            checkpoint = Path(ready.rsplit(", folder ", 1)[1].strip()) / "checkpoints" / "last.pt"
            read_until(proc, FIRST_EVALUATION)  # its signal handlers are installed; its checkpoint comes next
            while not checkpoint.exists() and proc.poll() is None:  # written before the flush that waits for the run
                time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            read_until(proc, "stopped by SIGTERM while its MLflow run was being created")
            assert mlflow_runs(db) == []
        except BaseException:
            proc.kill()
            raise
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr
    (killed,) = mlflow_runs(db)
    assert killed.info.status == "KILLED" and killed.data.tags["kbk.end_reason"] == "stopped by SIGTERM"
    assert read_run_record(checkpoint.parent)["run_id"] == killed.info.run_id  # so a resume continues it

    resumed = run([*args, "trainer.resume=true"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {checkpoint} at step 4" in resumed.stdout
    (again,) = mlflow_runs(db)
    assert again.info.run_id == killed.info.run_id and again.info.status == "FINISHED"
    assert [step for step, _ in metric_history(db, again.info.run_id, "val/loss")] == [4, 8, 12]
    assert Path(checkpoint).is_file()
