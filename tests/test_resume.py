"""Checkpoints and resume: a run killed mid-way and resumed with `trainer.resume=true` ends exactly where an
uninterrupted run of the same config ends, in the same MLflow run, with no gap or duplicate in its step metrics;
SIGTERM and Ctrl-C end the MLflow run KILLED. Plus the resume paths that must not damage a stored run.

The kill tests run real `python -m kbk.run` processes for a few seconds each: marked slow.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import (
    TINY,
    clean_env,
    compose_kbk,
    kbk_command,
    latest_checkpoint,
    metric_history,
    mlflow_runs,
    one_torch_thread,
)
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from kbk.errors import KbkError
from kbk.paths import PROJECT_ROOT

#: 300 steps over 2 epochs (249 steps each): a few seconds, long enough to stop mid-run; the resumed part crosses an
#: epoch end. Checkpoints (and with them the only MLflow flushes) at steps 100, 200, 249 and 300; an evaluation
#: every 20 steps.
LONG = [*TINY, "data.n_train_tokens=16000", "trainer.epochs=2", "trainer.max_steps=300", "trainer.eval_every=20",
        "trainer.checkpoint_every=100", "trainer.log_every=5"]
#: The progress line after which the run is stopped: the evaluation at step 120 comes 20 steps after the checkpoint
#: at 100 and 80 before the next, so the stop lands between two flushes, with metrics buffered and unflushed.
STOP_AFTER = "[kbk] step 120/"
HISTORY_KEYS = ("train/loss_lm", "val/loss", "train/loss_koopman", "koopman/0/spectral_radius")


def start(args: list[str], outputs: Path) -> subprocess.Popen:
    return subprocess.Popen(kbk_command([*args, f"paths.outputs={outputs}"]), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=clean_env(), cwd=PROJECT_ROOT)


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    return out


def checkpoint_of(outputs: Path) -> Path | None:
    if not (outputs / "checkpoints").is_dir():
        return None
    checkpoint = latest_checkpoint(outputs)
    return checkpoint if checkpoint.is_file() else None


def run_until(proc: subprocess.Popen, prefix: str, outputs: Path) -> str:
    """Read the run's output until a line starts with `prefix` (the process keeps running); returns the text."""
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(prefix):
            assert checkpoint_of(outputs) is not None, "no checkpoint written yet"
            return "".join(seen)
    proc.wait()
    raise AssertionError(f"the run ended (exit {proc.returncode}) before {prefix!r}:\n{''.join(seen)[-3000:]}")


def summary_of(outputs: Path) -> dict:
    summaries = sorted(outputs.glob("runs/*/*/summary.json"), key=lambda p: p.stat().st_mtime)
    assert summaries, f"no summary.json under {outputs}/runs"
    return json.loads(summaries[-1].read_text())


def histories(db: Path, run_id: str) -> dict[str, list[tuple[int, float]]]:
    return {key: metric_history(db, run_id, key) for key in HISTORY_KEYS}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, mlflow_schema):
    """The reference: the same config run start to finish in its own outputs folder (its own checkpoints)."""
    import shutil

    outputs = tmp_path_factory.mktemp("uninterrupted") / "outputs"
    outputs.mkdir()
    shutil.copy(mlflow_schema, outputs / "mlflow.db")
    text = finish(start(LONG, outputs))
    (run,) = mlflow_runs(outputs / "mlflow.db")
    assert run.info.status == "FINISHED", text[-3000:]
    return {"outputs": outputs, "summary": summary_of(outputs), "run": run,
            "histories": histories(outputs / "mlflow.db", run.info.run_id)}


def assert_same_as_uninterrupted(outputs: Path, reference: dict, label: str) -> None:
    db = outputs / "mlflow.db"
    runs = mlflow_runs(db)
    assert len(runs) == 1, f"{len(runs)} MLflow runs: the resumed run must continue the killed one"
    (run,) = runs
    assert run.info.status == "FINISHED", run.data.tags.get("kbk.end_reason")
    assert run.data.tags.get("kbk.resumes") == "1"
    assert run.data.tags["kbk.config_hash"] == reference["run"].data.tags["kbk.config_hash"]
    summary = summary_of(outputs)
    print(f"{label}: final val/loss resumed {summary['val/loss']!r} vs uninterrupted "
          f"{reference['summary']['val/loss']!r}; steps {summary['steps']} vs {reference['summary']['steps']}")
    assert summary["steps"] == reference["summary"]["steps"]
    assert summary["val/loss"] == reference["summary"]["val/loss"]  # exactly, on CPU
    assert run.data.metrics["val/loss"] == reference["run"].data.metrics["val/loss"]
    got = histories(db, run.info.run_id)
    for key, expected in reference["histories"].items():
        steps = [s for s, _ in got[key]]
        assert len(steps) == len(set(steps)), f"{key}: duplicate steps {sorted(s for s in steps if steps.count(s) > 1)}"
        assert steps == [s for s, _ in expected], f"{key}: steps differ (a gap or an extra) from the uninterrupted run"
        assert got[key] == expected, f"{key}: values differ from the uninterrupted run"
    # Params: the same as the uninterrupted run's, but for where the outputs go.
    params = dict(run.data.params)
    reference_params = dict(reference["run"].data.params)
    assert params.pop("paths.outputs") == str(outputs) and reference_params.pop("paths.outputs")
    assert params == reference_params


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_result(tmp_path, uninterrupted, mlflow_store):
    outputs = tmp_path / "outputs"
    mlflow_store(outputs)
    proc = start(LONG, outputs)
    run_until(proc, STOP_AFTER, outputs)
    proc.send_signal(signal.SIGKILL)
    finish(proc, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    checkpoint = checkpoint_of(outputs)
    at_kill = torch.load(checkpoint, weights_only=False)["position"]
    (killed,) = mlflow_runs(outputs / "mlflow.db")
    assert killed.info.status == "RUNNING"  # nothing can end a run on SIGKILL
    stored = metric_history(outputs / "mlflow.db", killed.info.run_id, "train/loss_lm")
    total = uninterrupted["summary"]["steps"]
    print(f"SIGKILL: checkpoint at step {at_kill['step']} of {total} (epoch {at_kill['epoch']}); MLflow held "
          f"train/loss_lm up to step {max((s for s, _ in stored), default=None)}")
    assert 0 < at_kill["step"] < total
    assert max((s for s, _ in stored), default=0) <= at_kill["step"]  # metrics reach MLflow only after a checkpoint

    text = finish(start([*LONG, "trainer.resume=true"], outputs))
    assert f"resuming {checkpoint} at step {at_kill['step']}" in text, text[-3000:]
    assert "Traceback" not in text
    assert_same_as_uninterrupted(outputs, uninterrupted, "SIGKILL")
    assert mlflow_runs(outputs / "mlflow.db")[0].info.run_id == killed.info.run_id
    assert json.loads((checkpoint.parent / "run.json").read_text())["run_id"] == killed.info.run_id
    assert latest_checkpoint(outputs) == checkpoint  # the resumed run wrote on where its checkpoint was


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_or_ctrl_c_ends_the_run_killed_and_it_resumes(tmp_path, uninterrupted, mlflow_store, signum):
    outputs = tmp_path / "outputs"
    db = mlflow_store(outputs)
    proc = start(LONG, outputs)
    run_until(proc, STOP_AFTER, outputs)
    proc.send_signal(signum)
    text = finish(proc, timeout=60)
    code = proc.returncode
    checkpoint = checkpoint_of(outputs)
    (run,) = mlflow_runs(db)
    step = torch.load(checkpoint, weights_only=False)["position"]["step"]
    stored = metric_history(db, run.info.run_id, "train/loss_lm")
    print(f"{signal.Signals(signum).name}: exit {code}, MLflow status {run.info.status} "
          f"({run.data.tags.get('kbk.end_reason')}), last checkpoint at step {step}, MLflow held train/loss_lm up to "
          f"step {max((s for s, _ in stored), default=None)}")
    assert code != 0
    assert run.info.status == "KILLED"
    assert signal.Signals(signum).name in run.data.tags.get("kbk.end_reason", "")
    assert "Traceback" not in text, text[-3000:]

    text = finish(start([*LONG, "trainer.resume=true"], outputs))
    assert "resuming" in text, text[-3000:]
    assert_same_as_uninterrupted(outputs, uninterrupted, signal.Signals(signum).name)


# --------------------------------------------------------------------------- resume paths that must not do damage


def run_in_process(overrides: list[str], output_dir: Path):
    from kbk.run import run

    cfg = compose_kbk(overrides, hydra=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    with one_torch_thread():
        return run(cfg, output_dir, sweep=False)


@pytest.fixture
def finished_run(tmp_path, mlflow_store):
    outputs = tmp_path / "outputs"
    db = mlflow_store(outputs)
    objective = run_in_process([*TINY, f"paths.outputs={outputs}"], tmp_path / "job1")
    (run,) = mlflow_runs(db)
    assert run.info.status == "FINISHED"
    return {"outputs": outputs, "db": db, "objective": objective, "run": run,
            "checkpoint": checkpoint_of(outputs)}


def test_resuming_a_finished_run_with_other_storage_settings_continues_it(tmp_path, finished_run):
    """Settings outside the config hash (where to store, whether to keep the checkpoint, the run's name) may
    differ when resuming: the run is continued, its params stay what they were."""
    outputs, db = finished_run["outputs"], finished_run["db"]
    objective = run_in_process([*TINY, f"paths.outputs={outputs}", "trainer.resume=true",
                                "trainer.log_checkpoint=true", "tracking.run_name=renamed"], tmp_path / "job2")
    assert objective == finished_run["objective"]
    (run,) = mlflow_runs(db)
    assert run.info.run_id == finished_run["run"].info.run_id
    assert run.info.status == "FINISHED" and run.data.tags.get("kbk.resumes") == "1"
    assert run.data.params == finished_run["run"].data.params
    assert run.info.run_name == finished_run["run"].info.run_name


def test_a_refused_resume_leaves_the_stored_run_as_it_was(tmp_path, finished_run):
    """Resuming another config's checkpoint (same shapes, another lr) cannot continue that config's MLflow run:
    a clear error naming the setting, and the stored run keeps its status."""
    outputs, db = finished_run["outputs"], finished_run["db"]
    with pytest.raises(KbkError, match="trainer.lr"):
        run_in_process([*TINY, f"paths.outputs={outputs}", "trainer.lr=0.002",
                        f"trainer.resume={finished_run['checkpoint']}"], tmp_path / "job2")
    (run,) = mlflow_runs(db)
    assert run.info.run_id == finished_run["run"].info.run_id
    assert run.info.status == "FINISHED", run.data.tags.get("kbk.end_reason")
    assert run.data.params == finished_run["run"].data.params
    assert not (tmp_path / "job2").exists()


def test_a_checkpoint_written_without_tracking_resumes_into_a_new_run_that_holds_its_history(tmp_path, mlflow_store):
    """A checkpoint of a tracking=none run has no MLflow run to continue: the resumed run is a new one, and it holds
    the metrics of the steps before the checkpoint too (each once), as if it had been tracked from the start."""
    outputs = tmp_path / "outputs"
    db = mlflow_store(outputs)
    run_in_process([*TINY, f"paths.outputs={outputs}", "tracking=none", "trainer.max_steps=8"], tmp_path / "job1")
    assert mlflow_runs(db) == []
    checkpointed = torch.load(checkpoint_of(outputs), weights_only=False)["history"]
    run_in_process([*TINY, f"paths.outputs={outputs}", "trainer.max_steps=8", "trainer.resume=true"],
                   tmp_path / "job2")
    (run,) = mlflow_runs(db)
    assert run.info.status == "FINISHED"
    logged = [(step, metrics["train/loss_lm"]) for step, metrics in checkpointed if "train/loss_lm" in metrics]
    assert logged and metric_history(db, run.info.run_id, "train/loss_lm") == logged
