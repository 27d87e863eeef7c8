"""`python -m kbk.evaluate`: a real tiny run (`python -m kbk.run` on synthetic data, a real MLflow SQLite store) is
evaluated by checkpoint path and by MLflow run id; its validation numbers must equal the run's own final evaluation,
its test split must be the synthetic source's third stream with its exact floor, and every bad input is one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY, TINY_DATA, clean_env, kbk_command, latest_checkpoint, one_torch_thread
from mlflow import MlflowClient

from kbk.data import TokenBatches, load_synthetic
from kbk.evaluate import main
from kbk.paths import PROJECT_ROOT

N_SEQ = 16  # TINY's model.n_seq


@pytest.fixture(scope="module")
def run(tmp_path_factory, mlflow_schema):
    """A finished tiny run: its checkpoint, summary, run folder, MLflow run id and store URI."""
    outputs = tmp_path_factory.mktemp("evaluate") / "outputs"
    outputs.mkdir()
    shutil.copy(mlflow_schema, outputs / "mlflow.db")
    proc = subprocess.run(kbk_command([*TINY, f"paths.outputs={outputs}"]), capture_output=True, text=True,
                          env=clean_env(), cwd=PROJECT_ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    checkpoint = latest_checkpoint(outputs)
    info = json.loads((checkpoint.parent / "run.json").read_text())
    return {"checkpoint": checkpoint, "uri": f"sqlite:///{outputs / 'mlflow.db'}", "run_id": info["run_id"],
            "run_dir": Path(info["output_dir"]),
            "summary": json.loads((Path(info["output_dir"]) / "summary.json").read_text())}


def evaluate_json(capsys, *args: str) -> dict:
    with one_torch_thread():
        assert main([*args, "--format", "json", "--device", "cpu"]) == 0
    return json.loads(capsys.readouterr().out)  # stdout holds the JSON alone: start-up lines went to stderr


def test_val_is_the_runs_final_evaluation_and_test_is_the_third_stream_with_its_floor(run, capsys):
    result = evaluate_json(capsys, str(run["checkpoint"]))
    summary, val, test = run["summary"], result["splits"]["val"], result["splits"]["test"]
    assert result["step"] == summary["steps"] == 12 and result["run_id"] == run["run_id"]
    assert val["loss"] == pytest.approx(summary["val/loss"], rel=1e-6)
    assert val["ppl_koopman"] == pytest.approx(summary["val/ppl_koopman"], rel=1e-6)
    assert val["loss_floor"] == pytest.approx(summary["val/loss_floor"], rel=1e-12)
    for layer in val["layers"]:
        for mode in ("koopman", "skip"):
            assert layer[f"ppl_{mode}_only"] == pytest.approx(
                summary[f"koopman/{layer['layer']}/val_ppl_{mode}_only"], rel=1e-6)
    corpus = load_synthetic(**{k.removeprefix("data."): int(v) for k, v in (a.split("=") for a in TINY_DATA)})
    assert test["tokens"] == TokenBatches(corpus.test(), N_SEQ, 4, shuffle=False).n_windows * N_SEQ
    assert test["loss_floor"] == pytest.approx(corpus.loss_floor(N_SEQ, "test"), rel=1e-12)
    assert test["loss"] != val["loss"] and test["loss"] > test["loss_floor"]
    assert len(test["layers"]) == 1 and test["ppl"] == pytest.approx(2.718281828 ** test["loss"], rel=1e-6)


def test_a_run_id_finds_the_same_checkpoint_and_config(run, capsys):
    by_path = evaluate_json(capsys, str(run["checkpoint"]), "--split", "val")
    by_id = evaluate_json(capsys, run["run_id"], "--uri", run["uri"], "--split", "val")
    assert list(by_id["splits"]) == ["val"] and by_id["checkpoint"] == str(run["checkpoint"])
    assert by_id["splits"] == by_path["splits"]


def test_the_table_shows_both_splits_and_the_layer_table(run):
    proc = subprocess.run([sys.executable, "-m", "kbk.evaluate", str(run["checkpoint"]), "--device", "cpu"],
                          capture_output=True, text=True, env=clean_env(), cwd=PROJECT_ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split("│")[1].strip(): line for line in proc.stdout.splitlines() if line.startswith("│")}
    assert set(rows) == {"val", "test", "0"}  # two split rows, one layer row
    assert f"{run['summary']['val/ppl']:.2f}" in rows["val"] and f"{run['summary']['val/ppl_floor']:.2f}" in rows["val"]
    assert "Koopman ppl" in proc.stdout and "val Koopman-only" in proc.stdout and "test skip-only" in proc.stdout
    assert "start-up" in proc.stderr and "start-up" not in proc.stdout


def bad_input(run, tmp_path, case: str) -> list[str]:
    """The arguments of one kind of bad input (creating what it needs)."""
    client = MlflowClient(run["uri"])
    experiment = client.get_run(run["run_id"]).info.experiment_id
    if case == "no such file":
        return [str(tmp_path / "missing.pt")]
    if case == "corrupt file":
        shutil.copytree(run["checkpoint"].parent, tmp_path / "copy")
        (tmp_path / "copy" / "last.pt").write_bytes(b"not a checkpoint")
        return [str(tmp_path / "copy" / "last.pt")]
    if case == "no run.json":
        shutil.copy(run["checkpoint"], tmp_path / "last.pt")
        return [str(tmp_path / "last.pt")]
    if case == "config of another model":
        config = yaml.safe_load((run["run_dir"] / ".hydra" / "config.yaml").read_text())
        config["model"]["d_model"] = 32
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
        return [str(run["checkpoint"]), "--config", str(tmp_path / "config.yaml")]
    if case == "run id not in the store":
        return ["0" * 32, "--uri", run["uri"]]
    if case == "run without a checkpoint":
        tags = {"kbk.output_dir": str(run["run_dir"]), "kbk.config_hash": "f" * 16}  # a config never trained
        orphan = client.create_run(experiment, tags=tags)
        return [orphan.info.run_id, "--uri", run["uri"]]
    if case == "sweep parent run":
        parent = client.create_run(experiment, tags={"kbk.role": "sweep", "kbk.sweep": "koopman_dim_grid"})
        return [parent.info.run_id, "--uri", run["uri"]]
    raise AssertionError(case)


BAD_INPUTS = {  # case: what the one line must say (its cause, then its fix)
    "no such file": ("missing.pt: no such checkpoint file, and not an MLflow run id", "Fix: pass the path of a"),
    "corrupt file": ("is corrupt or not a kbk checkpoint", "Fix: pass a last.pt that kbk wrote"),
    "no run.json": ("there is no run.json next to it", "Fix: pass --config"),
    "config of another model": ("does not fit the model its config", "Fix: pass the --config it was trained with"),
    "run id not in the store": (f"no MLflow run {'0' * 32} in sqlite:///", "Fix: copy the id from `mlflow ui`"),
    "run without a checkpoint": ("has no checkpoint:", "Fix: train it again with the same config"),
    "sweep parent run": ("is the parent run of sweep koopman_dim_grid", "Fix: evaluate one of its trials"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_naming_the_cause_and_the_fix(run, tmp_path, capsys, case):
    args = bad_input(run, tmp_path, case)
    with one_torch_thread():
        assert main([*args, "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("kbk.evaluate")]
    assert len(errors) == 1 and errors[0].startswith("kbk.evaluate: error: ") and captured.out == ""
    cause, fix = BAD_INPUTS[case]
    assert cause in errors[0] and fix in errors[0]


def test_the_command_line_exits_2_without_a_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "kbk.evaluate", str(tmp_path / "nothing.pt")], capture_output=True,
                          text=True, env=clean_env(), cwd=PROJECT_ROOT, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [proc.stderr.strip()] and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"kbk.evaluate: error: {tmp_path / 'nothing.pt'}: no such checkpoint file")


def test_a_run_whose_checkpoint_folder_is_gone_uses_its_logged_checkpoint(run, capsys):
    client = MlflowClient(run["uri"])
    experiment = client.get_run(run["run_id"]).info.experiment_id
    # a run of this config whose checkpoint folder was deleted, with trainer.log_checkpoint=true's copy
    logged = client.create_run(experiment, tags={"kbk.output_dir": str(run["run_dir"]), "kbk.config_hash": "e" * 16})
    client.log_artifact(logged.info.run_id, str(run["checkpoint"]), "checkpoints")
    result = evaluate_json(capsys, logged.info.run_id, "--uri", run["uri"], "--split", "val")
    assert result["checkpoint"] == f"runs:/{logged.info.run_id}/checkpoints/last.pt"
    assert result["splits"]["val"]["loss"] == pytest.approx(run["summary"]["val/loss"], rel=1e-6)
