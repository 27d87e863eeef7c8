"""A tiny run end to end: in-process through `kbk.run.run` (as Hydra calls it) against a real SQLite MLflow store,
and as a subprocess through both entrypoints (`python -m kbk.run`, `python kbk/run.py`)."""

from __future__ import annotations

import json
import math
import time

import pytest
import yaml
from conftest import TINY, artifact_paths, compose_kbk, metric_history, mlflow_runs, one_torch_thread
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

CONTRACT_METRICS = (
    "train/loss_lm", "train/loss_koopman", "train/koopman_weight", "train/loss_total", "val/loss", "val/ppl",
    "val/ppl_koopman", "val/loss_floor", "perf/tokens_per_s", "perf/step_ms", "koopman/0/spectral_radius",
)


def run_in_process(overrides: list[str], output_dir, write_hydra_dir: bool = False):
    """What `python -m kbk.run <overrides>` does for its job: compose (with the hydra node, made current with
    `HydraConfig().set_config`), save `.hydra/` like Hydra's `run_job` when asked, drop the hydra node, and call
    the task's `run`."""
    from kbk.run import run

    cfg = compose_kbk(overrides, hydra=True)
    HydraConfig().set_config(cfg)
    assert HydraConfig.get().job.name  # the job's Hydra settings are current, as inside @hydra.main
    if write_hydra_dir:
        hydra_dir = output_dir / ".hydra"
        hydra_dir.mkdir(parents=True)
        task_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        (hydra_dir / "config.yaml").write_text(OmegaConf.to_yaml(task_cfg))
        (hydra_dir / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    with open_dict(cfg):
        del cfg["hydra"]  # Hydra's run_job hands the task function the config without it
    start = time.perf_counter()
    with one_torch_thread():
        result = run(cfg, output_dir, sweep=False)
    print(f"in-process run of {overrides[-1]!r}: {time.perf_counter() - start:.1f} s, objective {result!r}")
    return result


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """Two in-process runs of one tiny config and seed into one fresh SQLite store (created by the first)."""
    root = tmp_path_factory.mktemp("tracked")
    outputs = root / "outputs"
    overrides = [*TINY, f"paths.outputs={outputs}"]
    db = outputs / "mlflow.db"
    assert not db.exists()
    first = run_in_process(overrides, root / "job1", write_hydra_dir=True)
    runs_after_first = mlflow_runs(db)
    second = run_in_process(overrides, root / "job2")
    return {"root": root, "outputs": outputs, "db": db, "objectives": (first, second),
            "runs_after_first": runs_after_first, "runs": mlflow_runs(db)}


def test_run_returns_the_finite_objective_that_summary_json_holds(tracked):
    objective = tracked["objectives"][0]
    summary = json.loads((tracked["root"] / "job1" / "summary.json").read_text())
    assert isinstance(objective, float) and math.isfinite(objective)
    assert objective == summary["val/ppl"]
    assert summary["val/ppl"] == pytest.approx(math.exp(summary["val/loss"]))
    assert summary["steps"] == 12
    assert 0 < summary["val/loss_floor"] < summary["val/loss"]  # nothing beats the Bayes-optimal loss


def test_each_run_is_one_finished_mlflow_run_with_the_composed_params(tracked):
    assert len(tracked["runs_after_first"]) == 1
    runs = tracked["runs"]
    assert len(runs) == 2
    for run in runs:
        assert run.info.status == "FINISHED", run.data.tags.get("kbk.end_reason")
        params = run.data.params
        expected = {"koopman.dim": "8", "dmd.buffer_size": "100", "dmd.alpha": "0.1", "schedule.type": "linear",
                    "schedule.max_weight": "0.1", "trainer.max_steps": "12", "trainer.batch_size": "4",
                    "model.d_model": "16", "seed": "0", "optimized_metric": "val/ppl", "tracking.experiment": "kbk"}
        assert {k: params.get(k) for k in expected} == expected
        assert int(params["model.n_params"]) > int(params["model.n_params_koopman"]) > 0
        assert not [k for k in params if k.startswith("hydra.") or k == "trainer.resume"]
        assert run.info.run_name and run.info.run_name != runs[0].info.run_id


def test_the_run_logs_the_contract_metrics_and_tags(tracked):
    db, run = tracked["db"], tracked["runs"][0]
    summary = json.loads((tracked["root"] / "job1" / "summary.json").read_text())
    missing = [m for m in CONTRACT_METRICS if m not in run.data.metrics]
    assert not missing, f"not logged: {missing}"
    assert run.data.metrics["val/loss"] == summary["val/loss"]
    assert run.data.metrics["val/ppl"] == summary["val/ppl"]
    val_steps = [step for step, _ in metric_history(db, run.info.run_id, "val/loss")]
    assert val_steps == [4, 8, 12]  # every eval_every=4 steps; the final evaluation is the one at step 12
    assert run.data.tags["kbk.config_hash"] == summary["config_hash"]
    assert len(summary["config_hash"]) == 16
    assert run.data.tags["kbk.output_dir"] == str((tracked["root"] / "job1").resolve())


def test_the_run_logs_the_contract_artifacts(tracked):
    db, (first, second) = tracked["db"], tracked["runs"]
    files = artifact_paths(db, first.info.run_id)
    for name in ("config.yaml", "plots/training_curves.png", "summary.json", ".hydra/config.yaml",
                 ".hydra/overrides.yaml"):
        assert name in files, f"{name} not among {sorted(files)}"
    assert not any(f.startswith(".hydra/") for f in artifact_paths(db, second.info.run_id))  # none to log there
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    download = tracked["root"] / "download"
    download.mkdir(exist_ok=True)
    logged_cfg = yaml.safe_load(open(client.download_artifacts(first.info.run_id, "config.yaml", str(download))))
    assert logged_cfg["koopman"]["dim"] == 8 and "hydra" not in logged_cfg
    summary = json.loads(open(client.download_artifacts(first.info.run_id, "summary.json", str(download))).read())
    assert summary["val/ppl"] == tracked["objectives"][0]
    # Artifacts land next to the database (outputs/mlartifacts), not in ./mlruns of whatever the current folder is.
    assert first.info.artifact_uri.startswith((tracked["outputs"] / "mlartifacts").as_uri())


def test_the_same_config_and_seed_give_the_same_metrics_exactly(tracked):
    db, (first, second) = tracked["db"], tracked["runs"]
    a, b = tracked["objectives"]
    assert a == b
    for key in ("val/loss", "train/loss_lm", "val/ppl_koopman"):
        assert metric_history(db, first.info.run_id, key) == metric_history(db, second.info.run_id, key), key
    assert first.data.tags["kbk.config_hash"] == second.data.tags["kbk.config_hash"]


def test_another_seed_gives_other_metrics(tmp_path, tracked):
    """(So the determinism test above cannot pass by ignoring the seed, or by returning a constant.)"""
    objective = run_in_process([*TINY, "tracking=none", "seed=1", f"paths.outputs={tmp_path}"], tmp_path / "job")
    assert objective != tracked["objectives"][0]


def test_several_optimized_metrics_return_a_list(tmp_path):
    result = run_in_process([*TINY, "tracking=none", "optimized_metric=[val/ppl,val/ppl_koopman]",
                             f"paths.outputs={tmp_path}"], tmp_path / "job")
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    assert isinstance(result, list) and result == [summary["val/ppl"], summary["val/ppl_koopman"]]
    assert all(math.isfinite(v) for v in result)


def test_tracking_none_writes_summary_json_and_no_mlflow_store(tmp_path, tiny_overrides):
    result = run_in_process([*tiny_overrides, "tracking=none"], tmp_path / "job")
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    assert result == summary["val/ppl"]
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert not [p for p in written if "mlflow" in p or "mlartifacts" in p or p.endswith(".db")], written
    assert "outputs/checkpoints" in " ".join(written)  # (the run did write under the outputs folder)
    assert "job/checkpoints/last.pt" in written  # in the run's own folder
    for plot in ("training_curves.png", "eigenvalues.png"):  # plots in the run folder without a tracker too
        assert (tmp_path / "job" / "plots" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------------ subprocesses


def assert_progress_lines(stdout: str) -> list[str]:
    lines = [line for line in stdout.splitlines() if line.startswith("[kbk] step ")]
    assert len(lines) == 3, stdout[-2000:]  # one per evaluation: steps 4, 8, 12
    for line in lines:
        assert "ppl" in line and "ETA" in line and "val " in line, line
    assert "tok/s" in lines[-1]
    assert any(line.startswith("[kbk] done: val/loss=") for line in stdout.splitlines())
    return lines


def test_python_m_kbk_run_from_another_folder(tmp_path, kbk_cli, mlflow_store):
    outputs = tmp_path / "outputs"
    db = mlflow_store(outputs)
    result = kbk_cli([*TINY, f"paths.outputs={outputs}"], cwd=tmp_path)
    assert result.returncode == 0, result
    assert "Traceback" not in result.stderr
    print(*assert_progress_lines(result.stdout), sep="\n")
    assert result.stdout.count("optimized_metric") == 1  # the resolved config, printed once
    (run,) = mlflow_runs(db)
    assert run.info.status == "FINISHED"
    files = artifact_paths(db, run.info.run_id)
    assert {".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml"} <= files, sorted(files)
    (job_dir,) = (outputs / "runs" / "kbk").iterdir()  # Hydra's job folder, under the outputs folder
    summary = json.loads((job_dir / "summary.json").read_text())
    assert run.data.metrics["val/ppl"] == summary["val/ppl"]
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "outputs" / "mlruns").exists()


def test_python_kbk_run_py_script(tmp_path, kbk_cli, tiny_overrides):
    outputs = tmp_path / "outputs"
    result = kbk_cli([*tiny_overrides, "tracking=none"], script=True)
    assert result.returncode == 0, result
    assert "Traceback" not in result.stderr
    assert_progress_lines(result.stdout)
    assert len(list((outputs / "runs").rglob("summary.json"))) == 1


def test_cfg_job_prints_the_config_without_running(tmp_path, kbk_cli):
    outputs = tmp_path / "outputs"
    result = kbk_cli(["--cfg", "job", "koopman.dim=128", f"paths.outputs={outputs}"], cwd=tmp_path)
    print(f"`python -m kbk.run --cfg job` wall time: {result.seconds:.2f} s")
    assert result.returncode == 0, result
    cfg = yaml.safe_load(result.stdout)
    assert cfg["koopman"]["dim"] == 128 and cfg["schedule"]["type"] == "linear" and "hydra" not in cfg
    assert set(cfg) >= {"model", "koopman", "schedule", "dmd", "data", "trainer", "tracking", "seed",
                        "optimized_metric"}
    assert not outputs.exists()  # nothing ran
