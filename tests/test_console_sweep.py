"""A sweep's console, from real `python -m kbk.run -m` subprocesses on a real MLflow store and Optuna journal
(issue 12): launch lines without kbk's environment plumbing, the config printed once, each trial's lines in its
own run.log, and closing lines whose commands run as printed. Marked slow (two sweeps and their commands)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from kbk.paths import PROJECT_ROOT
from kbk.sweep.storage import open_storage
from tests.conftest import TINY, clean_env

pytestmark = pytest.mark.slow


def closing(stdout: str, prefix: str) -> str:
    found = [line.removeprefix(f"[kbk] {prefix}") for line in stdout.splitlines()
             if line.startswith(f"[kbk] {prefix}")]
    assert len(found) == 1, (prefix, stdout[-3000:])
    return found[0]


def run_printed(command: str) -> subprocess.CompletedProcess:
    """A printed `python -m ...` command, run as a user would paste it (with this interpreter)."""
    words = shlex.split(command)
    assert words[0] == "python", command
    return subprocess.run([sys.executable, *words[1:]], capture_output=True, text=True, env=clean_env(),
                          cwd=PROJECT_ROOT, timeout=300)


def test_a_kbk_sweep_prints_clean_launch_lines_the_config_once_and_commands_that_work(tmp_path, kbk_cli,
                                                                                      mlflow_store):
    outputs = tmp_path / "outputs"
    db = mlflow_store(outputs)
    result = kbk_cli(["-m", "hparams_search=koopman_dim_grid", *TINY, "koopman.dim=8,16", f"paths.outputs={outputs}",
                      "hydra.sweeper.study_name=console"], timeout=600)
    assert result.returncode == 0, result
    launches = [line for line in result.stdout.splitlines() if re.search(r"\t#\d+ : ", line)]
    assert len(launches) == 2 and "koopman.dim=16" in launches[1], launches
    assert "env_set" not in result.stdout and "KBK_" not in result.stdout
    assert result.stdout.count("[kbk] config:\n") == 1
    assert "[kbk] config: as printed above, except koopman.dim=16\n" in result.stdout
    for trial in (0, 1):  # the trial got its number (its run name) and logged its lines to its own run.log
        log = (outputs / "sweeps" / "console" / str(trial) / "run.log").read_text()
        assert f"run 'trial-{trial}'" in log and "done: val/loss=" in log

    study = optuna.load_study(study_name="console", storage=open_storage(str(outputs / "optuna" / "console.journal")))
    best = study.best_trial
    assert closing(result.stdout, "best ") == (f"val/ppl={best.value:.6g} (trial {best.number}): "
                                               f"koopman.dim={best.params['koopman.dim']}")
    parent_id = re.fullmatch(r"'console', MLflow parent run ([0-9a-f]{32}) in (\S+)",
                             closing(result.stdout, "study ")).group(1)
    assert MlflowClient(f"sqlite:///{db}").get_run(parent_id).data.tags["kbk.role"] == "sweep"
    assert closing(result.stdout, "see it:  ").startswith(f"mlflow ui --backend-store-uri sqlite:///{db}  #")

    compared = run_printed(closing(result.stdout, "compare: "))
    assert compared.returncode == 0, compared.stderr
    assert "koopman.dim" in compared.stdout and "val/ppl" in compared.stdout
    report = closing(result.stdout, "report:  ")
    assert f"--out {outputs / 'reports' / 'console'}" in report
    reported = run_printed(report)
    assert reported.returncode == 0, reported.stderr
    assert (outputs / "reports" / "console" / "README.md").is_file()


def test_a_plain_multirun_ends_with_its_parent_run_and_a_compare_command_that_works(tmp_path, kbk_cli,
                                                                                   mlflow_store):
    outputs = tmp_path / "outputs"
    db = mlflow_store(outputs)
    result = kbk_cli(["-m", *TINY, f"paths.outputs={outputs}", "seed=0,1", "trainer.max_steps=4"], timeout=600)
    assert result.returncode == 0, result
    parent_id = re.fullmatch(r"([0-9a-f]{32}) in (\S+)", closing(result.stdout, "multirun done: MLflow parent run "))
    assert parent_id and parent_id.group(2) == f"sqlite:///{db}"
    command = closing(result.stdout, "compare: ")
    assert command == f"python -m kbk.compare --parent {parent_id.group(1)} --uri sqlite:///{db}"
    compared = run_printed(command)
    assert compared.returncode == 0, compared.stderr
    assert Path(db).is_file() and "seed" not in compared.stdout.splitlines()[0]  # grouped, never by seed
    assert " 2 " in compared.stdout  # both runs, in one group
