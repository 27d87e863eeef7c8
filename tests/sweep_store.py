"""A real MLflow store (SQLite) holding one sweep as kbk writes it: a parent with its search space, trials of
koopman.dim 128/256/512 over seeds, a failed and a pruned trial, and a single run outside the sweep."""

from mlflow import MlflowClient

COMMAND = "python -m kbk.run -m hparams_search=koopman_dim_grid model=tiny"
# val/ppl per (koopman.dim, seed); 512 has a third seed that 128 lacks.
PPL = {("128", 0): 200.0, ("128", 1): 196.0, ("256", 0): 190.0, ("256", 1): 187.0,
       ("512", 0): 180.0, ("512", 1): 181.0, ("512", 2): 179.0}


def _run(client, exp, name, params, metrics, tags, status="FINISHED"):
    run = client.create_run(exp, run_name=name, tags=tags)
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value)
    for key, value in metrics.items():
        for step, v in ((10, value * 1.5), (20, value)):
            client.log_metric(run.info.run_id, key, v, step=step)
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def build_store(tmp_path):
    """(tracking URI, parent run id) of the store written under `tmp_path`."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("kbk", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(exp, run_name="sweep-grid", tags={"kbk.role": "sweep", "kbk.sweep": "grid",
                                                                   "kbk.command": COMMAND})
    pid = parent.info.run_id
    # The parent holds the fixed settings (a different enum spelling would make its own group if it were a row)
    # and the search space.
    for key, value in {"sweep.params.koopman.dim": "CategoricalDistribution(choices=(128, 256, 512))",
                       "sweep.params.seed": "CategoricalDistribution(choices=(0, 1, 2))",
                       "dmd.estimator": "ridge", "koopman.dim": "256"}.items():
        client.log_param(pid, key, value)
    client.log_metric(pid, "val/ppl", 1.0)
    common = {"dmd.estimator": "ridge", "model.d_model": "64", "paths.outputs": "/x", "trainer.log_checkpoint":
              "False"}
    for i, ((dim, seed), ppl) in enumerate(PPL.items()):
        _run(client, exp, f"trial-{i}", {**common, "koopman.dim": dim, "seed": seed, "tracking.uri": f"u{i}"},
             {"val/ppl": ppl, "val/ppl_koopman": ppl + 10 + seed, "koopman/0/spectral_radius": 1.0 + seed / 10,
              "koopman/1/spectral_radius": 2.0, "koopman/layerwise_val_ppl": ppl - 20,
              "koopman/0/val_ppl_koopman_only": ppl - 10, "koopman/1/val_ppl_koopman_only": ppl - 15},
             {"kbk.role": "trial", "kbk.sweep": "grid", "mlflow.parentRunId": pid})
    _run(client, exp, "trial-7", {**common, "koopman.dim": "1024", "seed": "0"}, {},
         {"kbk.role": "trial", "kbk.sweep": "grid", "mlflow.parentRunId": pid,
          "kbk.end_reason": "ConfigError: out of memory"}, status="FAILED")
    _run(client, exp, "trial-8", {**common, "koopman.dim": "512", "seed": "3"}, {"val/ppl": 999.0},
         {"kbk.role": "trial", "kbk.sweep": "grid", "mlflow.parentRunId": pid, "kbk.end_reason": "pruned"},
         status="KILLED")
    _run(client, exp, "lonely", {**common, "koopman.dim": "64", "seed": "0"}, {"val/ppl": 300.0},
         {"kbk.role": "run"})
    client.set_terminated(pid, "FINISHED")
    _run(client, exp, "trial-0", {**common, "koopman.dim": "64", "seed": "0"}, {},
         {"kbk.role": "trial", "kbk.sweep": "dead"}, status="FAILED")  # a sweep with no finished trial
    return uri, pid
