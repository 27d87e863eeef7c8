"""The parent run of a plain Hydra multirun holds what kbk's sweeper's parent holds: the search space (as
`sweep.params.*` params, which `kbk.compare` groups by), the reproducing command, a results table and the best
value with its run — checked on a real MLflow store."""

from mlflow import MlflowClient
from omegaconf import OmegaConf

from kbk.sweep.multirun_parent import summarize_children, swept_overrides
from kbk.sweep.parent import redact_override, sweep_command
from kbk.tracking.mlflow_tracker import MlflowTracker


def test_swept_overrides_are_the_search_space():
    got = swept_overrides(["koopman.dim=16,32", "seed=0,1,2", "model=tiny", "+x=range(1,3)", "trainer.lr=0.01"])
    assert got == {"sweep.params.koopman.dim": "16,32", "sweep.params.seed": "0,1,2", "sweep.params.x": "range(1,3)"}


def test_sweep_command_redacts_passwords_and_drops_what_hydra_adds():
    hydra_cfg = OmegaConf.create({"overrides": {
        "hydra": ["hydra.mode=MULTIRUN", "hydra.sweeper.storage=postgresql://u:s3cret@db/optuna"],
        "task": ["koopman.dim=16,32", "tracking.uri=http://me:pw2@host:5000"]}})
    command = sweep_command(hydra_cfg)
    assert command.startswith("python -m kbk.run -m 'hydra.sweeper.storage=postgresql://u:***@db/optuna'")
    assert "koopman.dim=16,32" in command and "http://me:***@host:5000" in command
    assert "s3cret" not in command and "pw2" not in command and "MULTIRUN" not in command


def test_overrides_recorded_on_the_parent_carry_no_password():
    assert redact_override("tracking.uri=http://me:pw2@host:5000") == "tracking.uri=http://me:***@host:5000"
    assert redact_override("koopman.dim=16,32") == "koopman.dim=16,32"


def test_multirun_parent_gets_results_and_best_values(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = MlflowTracker.start(uri, "kbk", run_name="multirun-x", tags={"kbk.role": "sweep"},
                                 flush_interval_s=None)
    client = MlflowClient(uri)
    for i, (dim, seed, ppl) in enumerate([("16", "0", 30.0), ("16", "1", 32.0), ("32", "0", 25.0),
                                          ("32", "1", 27.0)]):
        run = client.create_run(parent.experiment_id, run_name=f"r{i}",
                                tags={"mlflow.parentRunId": parent.run_id, "kbk.role": "trial"})
        for key, value in {"koopman.dim": dim, "seed": seed}.items():
            client.log_param(run.info.run_id, key, value)
        client.log_metric(run.info.run_id, "val/ppl", ppl, step=3)
        client.set_terminated(run.info.run_id, "FINISHED")
    parent.log_params(swept_overrides(["koopman.dim=16,32", "seed=0,1"]))
    summarize_children(parent, "kbk", "val/ppl")
    parent.end("FINISHED")
    stored = client.get_run(parent.run_id)
    assert stored.data.metrics["best/val/ppl"] == 25.0
    assert stored.data.tags["best.val/ppl.run"] == "r2" and stored.data.tags["best.val/ppl.params.koopman.dim"] == "32"
    assert {a.path for a in client.list_artifacts(parent.run_id)} == {"results.csv", "results.md"}
    table = (tmp_path / "results.md")
    client.download_artifacts(parent.run_id, "results.md", str(tmp_path))
    lines = table.read_text().splitlines()
    assert lines[0] == "| koopman.dim | n | val/ppl (mean ± sd) | val/ppl 95% CI |"  # grouped by dim, not seed
    assert lines[2].startswith("| 16 | 2 | 31.00 ± 1.41 |") and lines[3].startswith("| 32 | 2 | 26.00 ± 1.41 |")
