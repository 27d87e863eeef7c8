"""A run's console, from a real `python -m kbk.run` subprocess: everything goes through logging (so the run folder's
run.log holds it), the config is printed once as YAML, and the first and last lines say where everything went
(issue 12)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from mlflow import MlflowClient

from tests.conftest import TINY

#: kbk's lines in run.log: Hydra's job-logging format, with the time and the logger.
LOGGED = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\]\[kbk\]\[INFO\] - (.*)$")


def kbk_lines(stdout: str) -> list[str]:
    return [line.removeprefix("[kbk] ") for line in stdout.splitlines() if line.startswith("[kbk] ")]


def value_after(lines: list[str], prefix: str) -> str:
    found = [line.removeprefix(prefix) for line in lines if line.startswith(prefix)]
    assert len(found) == 1, (prefix, lines)
    return found[0]


def test_an_untracked_run_logs_everything_to_run_log_and_says_where_it_went(tmp_path, kbk_cli):
    result = kbk_cli(["debug=fast", *TINY, f"paths.outputs={tmp_path / 'outputs'}", "tracking=none"])
    assert result.returncode == 0, result
    lines = kbk_lines(result.stdout)
    ready = next(line for line in lines if line.startswith("start-up") and "ready to train" in line)
    assert "not tracked" in ready and "MLflow" not in result.stdout, ready
    folder = Path(ready.split(", folder ")[1])
    assert folder.parent == tmp_path / "outputs" / "runs" / "kbk"
    assert value_after(lines, "run folder ") == str(folder)
    checkpoint = Path(value_after(lines, "checkpoint "))
    assert checkpoint.is_file() and checkpoint.name == "last.pt"

    logged = [m.group(1) for m in map(LOGGED.match, (folder / "run.log").read_text().splitlines()) if m]
    phases = [line.split(": ", 1)[1].split(" ")[0] for line in logged if line.startswith("start-up")]
    assert phases == ["data", "model", "ready"], logged
    assert any(line.startswith("step 12/12 (100%)") for line in logged)
    assert any(line.startswith("done: val/loss=") for line in logged)
    assert logged[-1] == f"run folder {folder}"  # the closing lines too
    # The terminal keeps the short format: no timestamp or logger name on kbk's lines.
    assert not any(LOGGED.match(line) or "[kbk][INFO]" in line for line in result.stdout.splitlines())


def test_the_config_is_printed_once_as_yaml_with_plain_enums_and_only_the_selected_sources_nulls(tmp_path,
                                                                                                  kbk_cli):
    result = kbk_cli([*TINY, f"paths.outputs={tmp_path / 'outputs'}", "tracking=none", "trainer.max_steps=4"])
    assert result.returncode == 0, result
    assert result.stdout.count("[kbk] config:") == 1
    block = result.stdout.split("[kbk] config:\n", 1)[1].split("\n[kbk] ", 1)[0]
    assert "koopman:\n  enabled: true\n" in block and "  operator_update: both\n" in block
    assert "  type: linear\n" in block and "  estimator: ridge\n" in block
    assert "OperatorUpdate" not in block and "None" not in block
    data = block.split("\ndata:\n", 1)[1].split("\ntrainer:", 1)[0]
    assert "  source: synthetic" in data and "  n_states: 32" in data
    for key in ("path", "tokenizer", "cache_dir", "hf_cache_dir", "prepare_command", "val_fraction", "hub_timeout_s"):
        assert f"  {key}:" not in data, data  # null, and options of the text sources only
    assert "  tags: []" not in block and "\ntags: []\nnotes: null" in block  # the rule is for data options only


def test_a_tracked_run_names_its_run_and_store_and_the_mlflow_ui_command(tmp_path, kbk_cli, mlflow_store):
    outputs = tmp_path / "outputs"
    db = mlflow_store(outputs)
    result = kbk_cli([*TINY, f"paths.outputs={outputs}", "trainer.max_steps=4"])
    assert result.returncode == 0, result
    lines = kbk_lines(result.stdout)
    ready = next(line for line in lines if line.startswith("start-up") and "ready to train" in line)
    match = re.search(r"ready to train: run '(.+)', MLflow run being created in (\S+), folder (\S+)$", ready)
    assert match, ready
    name, uri, folder = match.groups()
    created = re.compile(rf"MLflow run ([0-9a-f]{{32}}) created in {re.escape(uri)} while training \(run '(.+)'\)")
    run_id = next(m for m in map(created.fullmatch, lines) if m).group(1)  # its own line, once it exists
    assert uri == f"sqlite:///{db}"
    run = MlflowClient(uri).get_run(run_id)
    assert run.info.run_name == name and run.info.status == "FINISHED"
    assert run.data.tags["kbk.output_dir"] == folder
    command = value_after(lines, f"MLflow run {run_id}: ")
    assert shlex.split(command.split("#")[0]) == ["mlflow", "ui", "--backend-store-uri", f"sqlite:///{db}"]


def test_the_next_commands_are_pasteable_and_carry_no_password():
    from kbk import console
    from kbk.paths import PROJECT_ROOT

    assert console.mlflow_ui_hint("http://ana:s3cret@mlflow.lab:5000") == "open http://ana:***@mlflow.lab:5000"
    spaced = "sqlite:////data/my runs/mlflow.db"
    command = console.mlflow_ui_hint(spaced).split("  #")[0]
    assert shlex.split(command) == ["mlflow", "ui", "--backend-store-uri", spaced]
    default = f"sqlite:///{(PROJECT_ROOT / 'outputs').resolve() / 'mlflow.db'}"  # what kbk.compare reads unasked
    assert console.compare_command(default, "kbk", sweep="my study") == "python -m kbk.compare --sweep 'my study'"
    assert console.compare_command("postgresql://u:pw@db/mlflow", "lab", parent="abc") == (
        "python -m kbk.compare --parent abc --uri 'postgresql://u:***@db/mlflow' --experiment lab")
