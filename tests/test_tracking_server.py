"""kbk.tracking against a real `mlflow server` on loopback, and the PostgreSQL fixture the sweeper tests
reuse.

Run with `pytest -m integration`. Services come from tests/services.py.
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
from pathlib import Path

import pytest
from services import ServiceUnavailable, mlflow_server, postgres_server

from kbk.tracking.mlflow_tracker import MlflowTracker
from kbk.tracking.mlflow_writer import LONG_PARAMS_ARTIFACT
from kbk.tracking.resume import reopen_run
from kbk.tracking.store import ensure_experiment, resolve_tracking_uri

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as running:
        yield running


def test_run_through_a_tracking_server(server, tmp_path: Path):
    from mlflow import MlflowClient

    uri = resolve_tracking_uri(server.uri + "/", tmp_path)
    assert uri == server.uri
    experiment_id = ensure_experiment(uri, "integration")
    assert ensure_experiment(uri, "integration") == experiment_id  # idempotent

    hydra_dir = tmp_path / ".hydra"
    hydra_dir.mkdir()
    (hydra_dir / "config.yaml").write_text("koopman:\n  dim: 64\n")
    history = {}
    with MlflowTracker.start(uri, "integration", "parent", tags={"kbk.sweep": "it"}) as parent:
        with MlflowTracker.start(uri, "integration", "trial-0", parent_run_id=parent.run_id) as tracker:
            tracker.log_params(
                {"koopman": {"dim": 64}, "dmd": {"buffer_size": 32}, "schedule": list(range(1500))}
            )
            tracker.set_tags({"optuna.trial_number": 0})
            for step in range(300):
                values = {f"koopman/layer{i}/drift": step * 0.01 + i for i in range(4)}
                values["train/loss_lm"] = 4.0 - step * 0.001
                tracker.log_metrics(values, step=step)
                for key, value in values.items():
                    history.setdefault(key, []).append((step, value))
            tracker.log_metrics({"val/loss": float("nan")}, step=300)
            assert tracker.last_logged_step("train/loss_lm") == 299
            tracker.log_dir(hydra_dir)
            tracker.log_dict({"best_val_loss": 1.5})

    fresh = MlflowClient(tracking_uri=server.uri)
    run = fresh.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "trial-0"
    assert run.data.params["koopman.dim"] == "64" and run.data.params["dmd.buffer_size"] == "32"
    assert LONG_PARAMS_ARTIFACT in run.data.params["schedule"]
    assert (
        run.data.tags["mlflow.parentRunId"] == parent.run_id and run.data.tags["optuna.trial_number"] == "0"
    )
    for key, values in history.items():
        assert sorted((m.step, m.value) for m in fresh.get_metric_history(tracker.run_id, key)) == values
    (nan_metric,) = fresh.get_metric_history(tracker.run_id, "val/loss")
    assert nan_metric.step == 300 and math.isnan(nan_metric.value)

    downloads = tmp_path / "downloads"
    summary = fresh.download_artifacts(tracker.run_id, "summary.json", str(downloads))
    assert json.loads(Path(summary).read_text()) == {"best_val_loss": 1.5}
    long_params = fresh.download_artifacts(tracker.run_id, LONG_PARAMS_ARTIFACT, str(downloads))
    assert json.loads(json.loads(Path(long_params).read_text())["schedule"]) == list(range(1500))
    config = fresh.download_artifacts(tracker.run_id, ".hydra/config.yaml", str(downloads))
    assert Path(config).read_text() == "koopman:\n  dim: 64\n"
    # proxied artifacts: written by the server under --artifacts-destination
    assert any(p.name == "summary.json" for p in server.artifacts_dir.rglob("*"))

    children = fresh.search_runs(
        [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.run_id}'"
    )
    assert [r.info.run_id for r in children] == [tracker.run_id]

    resumed = reopen_run(uri, "integration", tracker.run_id, parent_run_id=parent.run_id)
    resumed.log_metrics({"train/loss_lm": 3.0}, step=300)
    resumed.end()
    assert fresh.get_run(tracker.run_id).info.status == "FINISHED"
    assert max(m.step for m in fresh.get_metric_history(tracker.run_id, "train/loss_lm")) == 300


def test_postgres_fixture_accepts_connections():
    psycopg2 = pytest.importorskip("psycopg2", reason="psycopg2 is needed to talk to the PostgreSQL fixture")
    with contextlib.ExitStack() as stack:
        try:
            pg = stack.enter_context(postgres_server())
        except ServiceUnavailable as e:
            pytest.skip(str(e))
        with psycopg2.connect(pg.url, connect_timeout=5) as connection, connection.cursor() as cursor:
            cursor.execute("CREATE TABLE trials (number integer PRIMARY KEY, value double precision)")
            cursor.execute("INSERT INTO trials VALUES (0, 0.5), (1, 0.25)")
            cursor.execute("SELECT sum(value), current_database(), current_user FROM trials")
            assert cursor.fetchone() == (0.75, pg.dbname, pg.user)
        connection.close()
    assert not pg.data_dir.exists()  # the cluster is deleted
    with socket.socket() as sock:  # and the server is gone
        assert sock.connect_ex(("127.0.0.1", pg.port)) != 0


def test_tracking_server_on_a_postgresql_backend(tmp_path: Path):
    """The cluster setup of docs/sweeps.md: many writers go through one `mlflow server` backed by PostgreSQL."""
    from mlflow import MlflowClient

    pytest.importorskip("psycopg2", reason="MLflow needs psycopg2 for a postgresql:// backend")
    with contextlib.ExitStack() as stack:
        try:
            pg = stack.enter_context(postgres_server(dbname="mlflow"))
        except ServiceUnavailable as e:
            pytest.skip(str(e))
        server = stack.enter_context(mlflow_server(tmp_path, backend_store_uri=pg.sqlalchemy_url))
        ensure_experiment(server.uri, "on-postgres")
        with MlflowTracker.start(server.uri, "on-postgres", "pg-run") as tracker:
            tracker.log_params({"koopman": {"dim": 32}})
            for step in range(1200):
                tracker.log_metrics({"train/loss_lm": 1.0 / (step + 1)}, step=step)
        fresh = MlflowClient(tracking_uri=server.uri)
        assert fresh.get_run(tracker.run_id).data.params == {"koopman.dim": "32"}
        history = fresh.get_metric_history(tracker.run_id, "train/loss_lm")
        assert sorted((m.step, m.value) for m in history) == [(s, 1.0 / (s + 1)) for s in range(1200)]
