"""Two sweeper processes started together on one study in a real PostgreSQL, tracking to a real `mlflow server`,
both on loopback (tests/services.py). Run with `pytest -m integration`."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import optuna
import pytest
from optuna.trial import TrialState

from kbk.paths import PROJECT_ROOT

pytestmark = pytest.mark.integration

MODEL = ["model=tiny", "model.n_seq=16", "model.d_model=16", "model.n_layers=1", "koopman.sample_tokens=32",
         "trainer.batch_size=4", "trainer.layerwise_eval=false"]
DATA = ["data.n_train_tokens=4000", "data.n_val_tokens=1000", "data.vocab_size=32"]
DIMS = (8, 12, 16, 24)


def test_two_workers_on_postgresql_and_a_tracking_server(services, tmp_path):
    pg, server = services
    overrides = ["hparams_search=koopman_dim_grid", f"koopman.dim=choice({','.join(map(str, DIMS))})",
                 "hydra/sweeper/pruner=median", "hydra.sweeper.pruner.n_startup_trials=2",
                 f"hydra.sweeper.storage={pg.url}", "tracking=server", f"tracking.uri={server.uri}",
                 "tracking.experiment=sweeps", *MODEL, *DATA, "trainer.max_steps=12", "trainer.eval_every=4",
                 f"paths.outputs={tmp_path / 'out'}"]
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "KBK_OUTPUTS")}
    command = [sys.executable, "-m", "kbk.run", "-m", *overrides]
    workers = [subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=540) for w in workers]
    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err[-3000:]
        assert "Traceback" not in err and "lock" not in err.lower()

    from kbk.sweep.storage import resolve_storage

    study = optuna.load_study(study_name="koopman_dim_grid", storage=resolve_storage(pg.url, tmp_path, ""))
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert Counter(t.params["koopman.dim"] for t in finished) == Counter(DIMS)  # one per point, none twice
    assert all(t.state != TrialState.RUNNING for t in study.trials)
    assert not [t for t in study.trials if "kbk.skip_reason" in t.user_attrs]  # the grid was queued once
    assert all(sorted(t.intermediate_values)[:1] == [4] for t in finished)  # jobs reported through PostgreSQL
    assert len({t.user_attrs["kbk.worker"] for t in study.trials}) == 2  # both processes claimed trials

    from mlflow import MlflowClient

    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("sweeps")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("kbk.role") == "sweep"]
    assert len(parents) == 1  # created once, by the process that created the study
    parent = parents[0]
    assert study.user_attrs["kbk.mlflow_parent"]["run_id"] == parent.info.run_id
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(int(c.data.tags["optuna.trial_number"]) for c in children) == sorted(t.number for t in finished)
    expected = {t.number: ("KILLED" if t.state == TrialState.PRUNED else "FINISHED") for t in finished}
    assert {int(c.data.tags["optuna.trial_number"]): c.info.status for c in children} == expected
    assert parent.info.status == "FINISHED"
    assert "best/val/ppl" in client.get_run(parent.info.run_id).data.metrics
