"""A password in `tracking.uri` or `hydra.sweeper.storage` is never written by kbk: not in MLflow params, tags or
artifacts, not in the printed config or any message, not in `.hydra/*.yaml`, `multirun.yaml`, the launcher's log
or the Optuna storage. The end-to-end tests plant a password and grep everything a run and a sweep produce."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import TINY, clean_env, compose_kbk, kbk_command
from omegaconf import OmegaConf
from services import free_port

from kbk.paths import PROJECT_ROOT
from kbk.tracking.store import check_server, redact_text, redact_url, url_password

PLANTED = "Pl4nted-S3cret"


def test_redaction_helpers():
    assert url_password(f"postgresql://kbk:{PLANTED}@db:5432/kbk") == PLANTED
    assert url_password("postgresql://kbk@db/kbk") is None and url_password("/abs/study.journal") is None
    assert redact_url(f"http://kbk:{PLANTED}@host:5000") == "http://kbk:***@host:5000"
    assert redact_url("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
    quoted = "p%40ss"  # "p@ss" as a URL holds it
    assert url_password(f"http://u:{quoted}@h") == "p@ss"
    assert redact_text(f"a {quoted} b p@ss c", ["p@ss"]) == "a *** b *** c"


def test_an_unreachable_server_with_a_password_is_named_without_it():
    from kbk.errors import TrackingError

    with pytest.raises(TrackingError) as error:
        check_server(f"http://kbk:{PLANTED}@127.0.0.1:{free_port()}", timeout_s=2)
    assert "kbk:***@127.0.0.1" in str(error.value) and PLANTED not in str(error.value)


def test_a_failing_run_does_not_print_or_leave_the_password(tmp_path):
    outputs = tmp_path / "outputs"
    uri = f"http://kbk:{PLANTED}@127.0.0.1:{free_port()}"
    proc = subprocess.run(kbk_command([*TINY, "tracking=server", f"tracking.uri={uri}", f"paths.outputs={outputs}"]),
                          capture_output=True, text=True, env=clean_env(), cwd=PROJECT_ROOT, timeout=300)
    assert proc.returncode == 2 and "cannot be reached" in proc.stderr, proc.stderr[-3000:]
    assert PLANTED not in proc.stdout + proc.stderr
    assert not holders(outputs)


def test_the_sweeper_keeps_a_storage_password_out_of_what_hydra_records(tmp_path, monkeypatch):
    """The jobs get the storage URL from the environment, and the sweep's recorded overrides show it redacted; a
    fixed override holding a password leaves the trial's (logged) overrides."""
    from hydra.utils import instantiate

    from kbk.sweep import ENV_STORAGE
    from kbk.sweep.space import parse_space

    storage = f"postgresql+psycopg2://kbk:{PLANTED}@db.example/kbk"
    uri = f"http://kbk:{PLANTED}@mlflow.example:5000"
    cfg = compose_kbk(["hparams_search=koopman_dim_grid", f"hydra.sweeper.storage={storage}", f"tracking.uri={uri}",
                       f"paths.outputs={tmp_path}"], hydra=True)
    sweeper = instantiate(cfg.hydra.sweeper)
    sweeper.config = cfg
    monkeypatch.setenv(ENV_STORAGE, "")  # recorded first, so that the value the sweeper sets is undone afterwards
    monkeypatch.delenv(ENV_STORAGE)
    space = parse_space(sweeper.params, [f"tracking.uri={uri}"])
    secrets = sweeper._hide_secrets(storage, space)
    assert secrets == [PLANTED, PLANTED] and os.environ[ENV_STORAGE] == storage
    assert not any(PLANTED in o for o in space.fixed)
    recorded = OmegaConf.to_yaml(cfg.hydra)
    assert f"hydra.sweeper.storage={redact_url(storage)}" in recorded and f"tracking.uri={uri}" in recorded
    assert PLANTED not in recorded.replace(f"tracking.uri={uri}", "")  # only the moved override, which jobs need


def test_the_sweep_storage_can_come_from_the_environment(tmp_path, monkeypatch):
    from hydra.utils import instantiate

    from kbk.sweep import ENV_STORAGE

    cfg = compose_kbk(["hparams_search=koopman_dim_grid", f"paths.outputs={tmp_path}"], hydra=True)
    sweeper = instantiate(cfg.hydra.sweeper)
    sweeper.config = cfg
    monkeypatch.setenv(ENV_STORAGE, str(tmp_path / "elsewhere.journal"))
    assert sweeper._checked_plan([]).storage_spec == str(tmp_path / "elsewhere.journal")


def holders(*folders: Path) -> list[str]:
    """Files under `folders` whose bytes hold the planted password (raw or URL-quoted)."""
    found = []
    for folder in folders:
        for path in folder.rglob("*") if folder.exists() else []:
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                if PLANTED.encode() in data or PLANTED.replace("-", "%2D").encode() in data:
                    found.append(str(path))
    return found


def everything_in_mlflow(uri: str) -> str:
    """Every run's params, tags, metric names and the text of every artifact, as one string."""
    import tempfile

    from mlflow import MlflowClient

    client = MlflowClient(uri)
    parts = []
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id], max_results=1000):
            parts.append(json.dumps({"params": run.data.params, "tags": run.data.tags, "info": str(run.info)}))
            with tempfile.TemporaryDirectory() as tmp:
                local = Path(client.download_artifacts(run.info.run_id, "", tmp))
                parts += [p.read_text(errors="replace") for p in local.rglob("*") if p.is_file()]
    return "\n".join(parts)


def with_password(url: str) -> str:
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1) if "@" in rest else ("kbk", rest)
    return f"{scheme}://{user}:{PLANTED}@{host}"


@pytest.mark.slow
@pytest.mark.integration
def test_a_planted_password_is_in_no_file_param_or_line_of_a_run_and_a_sweep(services, tmp_path):
    """The servers ignore the password (trust authentication, no auth on the MLflow server), so the run and the
    sweep work as usual; then every file, MLflow param, tag and artifact, the Optuna storage and the console are
    searched for it."""
    import optuna

    pg, server = services
    tracking = ["tracking=server", f"tracking.uri={with_password(server.uri)}"]
    outputs = tmp_path / "outputs"
    run = subprocess.run(kbk_command([*TINY, *tracking, f"paths.outputs={outputs}"]), capture_output=True, text=True,
                         env=clean_env(), cwd=PROJECT_ROOT, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    storage = with_password(pg.sqlalchemy_url)
    sweep = subprocess.run(
        kbk_command(["-m", "hparams_search=koopman_dim_grid", *TINY, "koopman.dim=choice(8,16)", *tracking,
                     f"hydra.sweeper.storage={storage}", f"paths.outputs={outputs}"]),
        capture_output=True, text=True, env=clean_env(), cwd=PROJECT_ROOT, timeout=400)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert "#0 : " in sweep.stderr + sweep.stdout  # the launcher's log of the trials' overrides is searched too

    assert (outputs / "sweeps" / "koopman_dim_grid" / "multirun.yaml").is_file()
    assert len(list(outputs.rglob(".hydra/hydra.yaml"))) == 3  # the run and both trials
    assert PLANTED not in run.stdout + run.stderr + sweep.stdout + sweep.stderr
    # The outputs, the MLflow server's database, artifacts and log, and PostgreSQL's data files (the Optuna study).
    assert not holders(outputs, server.artifacts_dir.parent, pg.data_dir)
    stored = everything_in_mlflow(server.uri)
    assert "tracking.uri" in stored and "kbk:***@" in stored  # the param is there, redacted
    assert PLANTED not in stored
    study = optuna.load_study(study_name="koopman_dim_grid", storage=pg.sqlalchemy_url)
    assert len([t for t in study.trials if t.state.name == "COMPLETE"]) == 2
    system_attrs = study._storage.get_study_system_attrs(study._study_id)
    attrs = json.dumps([study.user_attrs, system_attrs, [(t.user_attrs, t.system_attrs, t.params)
                                                         for t in study.trials]], default=str)
    assert PLANTED not in attrs
