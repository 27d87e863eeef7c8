"""End-to-end sweeps of the real `kbk.run` job at tiny size: in-process through Hydra's sweep runner where possible,
as subprocesses where a kill, a second process or a launcher's workers are needed. Marked slow (minutes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

import kbk.run  # noqa: F401 (registers the config schema and the resolvers, as `python -m kbk.run` does)
from kbk.paths import CONF_DIR, PROJECT_ROOT
from kbk.sweep.storage import open_storage

pytestmark = pytest.mark.slow
optuna.logging.set_verbosity(optuna.logging.WARNING)

MODEL = ["model=tiny", "model.n_seq=16", "model.d_model=16", "model.n_layers=1", "koopman.sample_tokens=32",
         "trainer.batch_size=4", "trainer.layerwise_eval=false"]
DATA = ["data.n_train_tokens=4000", "data.n_val_tokens=1000", "data.vocab_size=32"]
TINY = [*MODEL, *DATA, "trainer.max_steps=6", "trainer.eval_every=3"]


def kbk_task(cfg):
    """What `python -m kbk.run` does for each job of a multirun."""
    from hydra.core.hydra_config import HydraConfig

    from kbk.run import run

    return run(cfg, Path(HydraConfig.get().runtime.output_dir), sweep=True)


def sweep(runner, overrides: list[str], folder: Path):
    return runner(calling_file=str(PROJECT_ROOT / "kbk" / "run.py"), calling_module=None, task_function=kbk_task,
                  config_path=str(CONF_DIR), config_name="config", overrides=overrides, temp_dir=folder)


def load_study(out: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(str(out / "optuna" / f"{name}.journal")))


def mlflow_runs(out: Path) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("kbk")
    return list(client.search_runs([experiment.experiment_id], max_results=1000))


def parent_and_children(runs: list, role: str = "sweep"):
    parents = [r for r in runs if r.data.tags.get("kbk.role") == role]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return parent, children


def finished_per_point(study: optuna.Study, names: list[str]) -> Counter:
    return Counter(tuple(t.params[n] for n in names) for t in study.trials
                   if t.state in (TrialState.COMPLETE, TrialState.PRUNED))


def kbk_command(overrides: list[str], multirun: bool = True) -> list[str]:
    return [sys.executable, "-m", "kbk.run", *(["-m"] if multirun else []), *overrides]


def run_kbk(overrides: list[str], timeout: float = 420, multirun: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "KBK_OUTPUTS")}
    return subprocess.run(kbk_command(overrides, multirun), cwd=PROJECT_ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the sweep ended ({proc.returncode}) before {what}:\n{proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def trial_run_running(out: Path) -> bool:
    """A trial's MLflow run exists and is RUNNING (a kill now leaves it RUNNING, for the resume to settle)."""
    try:
        return any(r.info.status == "RUNNING" and "optuna.trial_number" in r.data.tags for r in mlflow_runs(out))
    except Exception:  # noqa: BLE001 (the store or experiment is still being created)
        return False


def study_state(path: Path, name: str) -> Counter:
    if not path.exists():
        return Counter()
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(str(path)))
    except KeyError:
        return Counter()
    return Counter(t.state.name for t in study.trials)


# --------------------------------------------------------------------------------------------- in-process


def test_grid_sweep_runs_each_point_once_under_one_mlflow_parent(hydra_sweep_runner, tmp_path):
    out = tmp_path / "out"
    overrides = ["hparams_search=koopman_dim_grid", "koopman.dim=choice(8,16,32)", *TINY, f"paths.outputs={out}"]
    with sweep(hydra_sweep_runner, overrides, tmp_path / "sweep") as s:
        results = yaml.safe_load((Path(s.temp_dir) / "optimization_results.yaml").read_text())
        assert (Path(s.temp_dir) / "results.csv").read_text().count("\n") == 4
        job_dirs = sorted(p.name for p in Path(s.temp_dir).iterdir() if p.is_dir())
    study = load_study(out, "koopman_dim_grid")
    assert finished_per_point(study, ["koopman.dim"]) == Counter({(8,): 1, (16,): 1, (32,): 1})
    assert job_dirs == ["0", "1", "2"]  # job folders named by trial number
    assert results["trials"]["COMPLETE"] == 3 and results["best_params"]["koopman.dim"] in (8, 16, 32)
    assert results["best_value"] == min(t.value for t in study.trials)

    parent, children = parent_and_children(mlflow_runs(out))
    assert study.user_attrs["kbk.mlflow_parent"]["run_id"] == parent.info.run_id
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["best/val/ppl"] == pytest.approx(results["best_value"])
    assert parent.data.params["sweep.params.koopman.dim"] == "CategoricalDistribution(choices=(8, 16, 32))"
    assert parent.data.tags["best.params.koopman.dim"] == str(results["best_params"]["koopman.dim"])
    assert sorted(r.info.run_name for r in children) == ["trial-0", "trial-1", "trial-2"]
    for child in children:
        tags = child.data.tags
        assert child.info.status == "FINISHED"
        assert tags["kbk.sweep"] == "koopman_dim_grid"
        number = int(tags["optuna.trial_number"])
        assert child.data.params["koopman.dim"] == str(study.trials[number].params["koopman.dim"])
        assert child.data.metrics["val/ppl"] == pytest.approx(study.trials[number].value)
    assert len({c.data.tags["kbk.config_hash"] for c in children}) == 3
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"optimization_results.yaml", "results.csv", "results.json", "plots"} <= artifacts
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert "plots/optimization_history.png" in plots

    # The same command again: nothing new runs, the parent is reused.
    with sweep(hydra_sweep_runner, overrides, tmp_path / "sweep"):
        pass
    assert len(load_study(out, "koopman_dim_grid").trials) == 3
    parent_again, children_again = parent_and_children(mlflow_runs(out))
    assert parent_again.info.run_id == parent.info.run_id and len(children_again) == 3
    assert parent_again.info.status == "FINISHED" and parent_again.data.tags["kbk.resumes"] == "1"


@pytest.mark.parametrize("preset", ["schedule_grid", "dmd_buffer_grid", "ablation_grid"])
def test_grid_presets_run_at_tiny_size(hydra_sweep_runner, tmp_path, preset):
    out = tmp_path / "out"
    # koopman.dim=8 replaces the ablation's koopman.dim sweep (a plain value on the command line fixes it).
    overrides = [f"hparams_search={preset}", "koopman.dim=8", "hydra.sweeper.n_trials=3", *TINY,
                 f"paths.outputs={out}"]
    with sweep(hydra_sweep_runner, overrides, tmp_path / "sweep"):
        pass
    study = load_study(out, preset)
    finished = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(finished) == 3 == len(study.trials)
    assert len({tuple(sorted(t.params.items())) for t in finished}) == 3
    if preset == "schedule_grid":  # config-group choices reach the job
        _, children = parent_and_children(mlflow_runs(out))
        # (kbk.run logs the enum as "ScheduleType.step" at the time of writing: compare the last part.)
        types = sorted(c.data.params["schedule.type"].rsplit(".", 1)[-1] for c in children)
        assert types == ["exponential", "linear", "step"]
    if preset == "ablation_grid":
        assert set(finished[0].params) == {"schedule", "dmd.buffer_size", "seed"}


def test_tpe_search_reports_intermediate_values(hydra_sweep_runner, tmp_path):
    out = tmp_path / "out"
    overrides = ["hparams_search=tpe_pruned", "koopman.dim=choice(8,16)", "hydra.sweeper.n_trials=5",
                 "hydra.sweeper.sampler.n_startup_trials=2", "hydra/sweeper/pruner=none", *TINY,
                 f"paths.outputs={out}"]
    with sweep(hydra_sweep_runner, overrides, tmp_path / "sweep") as s:
        results = yaml.safe_load((Path(s.temp_dir) / "optimization_results.yaml").read_text())
    study = load_study(out, "tpe_pruned")
    finished = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(finished) == 5 and len(study.trials) == 5
    assert set(results["best_params"]) == {"koopman.dim", "schedule.max_weight", "dmd.alpha", "trainer.lr"}
    assert results["best_value"] == min(t.value for t in finished)
    for t in finished:  # every evaluation reported (steps 3 and 6) from the job's process
        assert sorted(t.intermediate_values) == [3, 6]
        assert 1e-4 <= t.params["trainer.lr"] <= 1e-2


def test_pruned_trial_is_pruned_in_optuna_and_killed_in_mlflow(hydra_sweep_runner, tmp_path):
    out = tmp_path / "out"
    # Trial 0 learns (lr 3e-3); trial 1 barely moves (lr 1e-5): worse than trial 0 at the first report.
    overrides = ["hparams_search=koopman_dim_grid", "koopman.dim=choice(8)", "trainer.lr=choice(0.003,0.00001)",
                 "hydra/sweeper/pruner=median", "hydra.sweeper.pruner.n_startup_trials=1",
                 *MODEL, *DATA, "trainer.max_steps=12", "trainer.eval_every=3", f"paths.outputs={out}"]
    with sweep(hydra_sweep_runner, overrides, tmp_path / "sweep"):
        pass
    study = load_study(out, "koopman_dim_grid")
    by_lr = {t.params["trainer.lr"]: t for t in study.trials}
    assert by_lr[0.003].state == TrialState.COMPLETE
    pruned = by_lr[0.00001]
    assert pruned.state == TrialState.PRUNED
    assert pruned.last_step == 3 and "MedianPruner at step 3" in pruned.user_attrs["prune_reason"]
    _, children = parent_and_children(mlflow_runs(out))
    by_number = {int(c.data.tags["optuna.trial_number"]): c for c in children}
    assert by_number[by_lr[0.003].number].info.status == "FINISHED"
    killed = by_number[pruned.number]
    assert killed.info.status == "KILLED"
    assert killed.data.tags["kbk.end_reason"].startswith("pruned: pruned by MedianPruner at step 3")
    assert killed.data.tags["kbk.outcome"] == "pruned" and killed.info.run_name.endswith("(pruned)")


def test_nan_and_crashing_trials_fail_with_reasons_and_the_sweep_goes_on(hydra_sweep_runner, tmp_path):
    """(A value no trial can compose is refused before the sweep starts: test_sweep_bad_input.py.)"""
    out = tmp_path / "out"
    text = tmp_path / "corpus.txt"
    text.write_text(" ".join(f"w{(i * 7919) % 97}" for i in range(6000)))
    missing = tmp_path / "missing.txt"
    overrides = ["hparams_search=koopman_dim_grid", "koopman.dim=choice(8)", "data=text",
                 f"data.path=choice({text},{missing})", "trainer.lr=choice(0.003,1e9)", "trainer.max_nan_steps=100",
                 "hydra.sweeper.max_failure_rate=1.0",
                 *MODEL, "trainer.max_steps=6", "trainer.eval_every=3", f"paths.outputs={out}"]
    with sweep(hydra_sweep_runner, overrides, tmp_path / "sweep") as s:
        results = yaml.safe_load((Path(s.temp_dir) / "optimization_results.yaml").read_text())
    study = load_study(out, "koopman_dim_grid")
    assert results["trials"]["COMPLETE"] == 1 and results["trials"]["FAIL"] == 3
    reasons = {(Path(t.params["data.path"]).name, t.params["trainer.lr"]): t.user_attrs.get("fail_reason")
               for t in study.trials}
    assert reasons[("corpus.txt", 0.003)] is None
    assert reasons[("corpus.txt", 1e9)].startswith("non-finite objective: val/ppl=")
    assert str(missing) in reasons[("missing.txt", 0.003)]
    # MLflow: runs exist only for trials that started training; the non-finite one says why it failed.
    _, children = parent_and_children(mlflow_runs(out))
    statuses = sorted((c.info.status, c.data.tags.get("kbk.end_reason", "")[:25]) for c in children)
    assert statuses == [("FAILED", "non-finite objective: val"), ("FINISHED", "")]


def test_failure_limit_stops_the_sweep_with_an_error(hydra_sweep_runner, tmp_path, capsys):
    out = tmp_path / "out"
    overrides = ["hparams_search=koopman_dim_grid", "koopman.dim=choice(8,16,32)", "trainer.lr=1e9",
                 "trainer.max_nan_steps=100", "hydra.sweeper.max_failure_rate=0", *TINY, f"paths.outputs={out}"]
    with pytest.raises(SystemExit) as stop:
        with sweep(hydra_sweep_runner, overrides, tmp_path / "sweep"):
            pass
    assert stop.value.code == 2
    assert "kbk: error: 1 trials failed, more than max_failure_rate=0.0 × 3" in capsys.readouterr().err
    study = load_study(out, "koopman_dim_grid")
    assert [t.state for t in study.trials if "kbk.skip_reason" not in t.user_attrs].count(TrialState.FAIL) == 1
    assert all(t.state != TrialState.RUNNING for t in study.trials)
    parent, _ = parent_and_children(mlflow_runs(out))
    assert parent.info.status == "FAILED"


def test_two_objectives_give_a_pareto_front(hydra_sweep_runner, tmp_path):
    out = tmp_path / "out"
    overrides = ["hparams_search=ppl_vs_speed", "koopman.dim=choice(8,16)", "model.d_model=choice(16,32)",
                 "model.n_layers=choice(1)", "dmd.buffer_size=choice(100)", "hydra.sweeper.n_trials=4",
                 "hydra.sweeper.sampler.population_size=2", *TINY, f"paths.outputs={out}"]
    with sweep(hydra_sweep_runner, overrides, tmp_path / "sweep") as s:
        results = yaml.safe_load((Path(s.temp_dir) / "optimization_results.yaml").read_text())
    study = load_study(out, "ppl_vs_speed")
    assert len(study.directions) == 2 and results["directions"] == ["minimize", "minimize"]
    front = results["pareto_front"]
    assert front and {n for p in front for n in p["values"]} == {"val/ppl", "perf/step_ms"}
    assert sorted(p["number"] for p in front) == sorted(t.number for t in study.best_trials)
    parent, children = parent_and_children(mlflow_runs(out))
    from mlflow import MlflowClient

    plots = {a.path for a in MlflowClient(f"sqlite:///{out / 'mlflow.db'}").list_artifacts(parent.info.run_id,
                                                                                          "plots")}
    assert "plots/pareto_front.png" in plots
    assert parent.data.metrics["pareto/size"] == len(front)


def test_plain_multirun_gets_a_parent_run(hydra_sweep_runner, tmp_path):
    out = tmp_path / "out"
    with sweep(hydra_sweep_runner, ["koopman.dim=8,16", *TINY, f"paths.outputs={out}"], tmp_path / "sweep"):
        pass
    parent, children = parent_and_children(mlflow_runs(out), role="sweep")
    assert parent.info.status == "FINISHED" and len(children) == 2
    assert sorted(c.data.params["koopman.dim"] for c in children) == ["16", "8"]
    assert "KBK_PARENT_RUN_ID" not in os.environ


def test_single_run_gets_no_parent(tmp_path):
    out = tmp_path / "out"
    proc = run_kbk([*TINY, f"paths.outputs={out}"], multirun=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = mlflow_runs(out)
    assert len(runs) == 1 and "mlflow.parentRunId" not in runs[0].data.tags


# ---------------------------------------------------------------------------------------------- launchers


def test_plain_multirun_with_joblib_workers_nests_under_the_parent(tmp_path):
    out = tmp_path / "out"
    proc = run_kbk(["koopman.dim=8,16,24", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *TINY,
                    f"paths.outputs={out}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    parent, children = parent_and_children(mlflow_runs(out), role="sweep")
    assert len(children) == 3 and parent.info.status == "FINISHED"


@pytest.mark.parametrize("launcher", [["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
                                      ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"]],
                         ids=["joblib", "submitit_local"])
def test_kbk_sweep_through_parallel_launchers(tmp_path, launcher):
    out = tmp_path / "out"
    proc = run_kbk(["hparams_search=koopman_dim_grid", "koopman.dim=choice(8,16,24,32)", "hydra.sweeper.n_jobs=2",
                    *launcher, *TINY, f"paths.outputs={out}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load_study(out, "koopman_dim_grid")
    assert finished_per_point(study, ["koopman.dim"]) == Counter({(d,): 1 for d in (8, 16, 24, 32)})
    for t in study.trials:  # each trial reported from the launcher's worker process
        assert sorted(t.intermediate_values) == [3, 6]
    parent, children = parent_and_children(mlflow_runs(out))
    assert len(children) == 4 and {c.info.status for c in children} == {"FINISHED"}


# ------------------------------------------------------------------------------------- kill, parallel


def grid_sweep(out: Path, dims: str, max_steps: int, stdout: int) -> tuple[list[str], subprocess.Popen]:
    """A `koopman_dim_grid` sweep over `dims` started in the background: its overrides and its process."""
    overrides = ["hparams_search=koopman_dim_grid", f"koopman.dim=choice({dims})", *MODEL, *DATA,
                 f"trainer.max_steps={max_steps}", "trainer.eval_every=10", f"paths.outputs={out}"]
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "KBK_OUTPUTS")}
    return overrides, subprocess.Popen(kbk_command(overrides), cwd=PROJECT_ROOT, env=env, stdout=stdout,
                                       stderr=subprocess.PIPE, text=True)


def test_killed_sweep_resumes_with_one_finished_trial_per_point(tmp_path):
    out = tmp_path / "out"
    journal = out / "optuna" / "koopman_dim_grid.journal"
    overrides, proc = grid_sweep(out, "8,16,24,32", 40, stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: (c := study_state(journal, "koopman_dim_grid"))["COMPLETE"] >= 1 and c["RUNNING"] >= 1,
                 300, "a finished and a running trial", proc)
        wait_for(lambda: trial_run_running(out), 300, "the running trial's MLflow run", proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed = study_state(journal, "koopman_dim_grid")
    assert killed["RUNNING"] == 1 and killed["COMPLETE"] < 4

    again = run_kbk(overrides)
    assert again.returncode == 0, again.stderr[-3000:]
    study = load_study(out, "koopman_dim_grid")
    assert finished_per_point(study, ["koopman.dim"]) == Counter({(d,): 1 for d in (8, 16, 24, 32)})
    stale = [t for t in study.trials if "kbk.stale" in t.user_attrs]
    assert len(stale) == 1 and stale[0].state == TrialState.FAIL and "is gone" in stale[0].user_attrs["kbk.stale"]
    parent, children = parent_and_children(mlflow_runs(out))
    assert parent.info.status == "FINISHED"
    by_number = {int(c.data.tags["optuna.trial_number"]): c for c in children}
    assert by_number[stale[0].number].info.status == "KILLED"  # left RUNNING by the kill, settled on resume
    assert sorted(n for n, c in by_number.items() if c.info.status == "FINISHED") == sorted(
        t.number for t in study.trials if t.state == TrialState.COMPLETE)


def test_two_sweeper_processes_share_a_grid_without_duplicates(tmp_path):
    out = tmp_path / "out"
    journal = out / "optuna" / "koopman_dim_grid.journal"
    overrides, first = grid_sweep(out, "8,12,16,20,24,32", 20, stdout=subprocess.PIPE)
    try:
        wait_for(lambda: study_state(journal, "koopman_dim_grid")["RUNNING"] >= 1, 300, "a running trial", first)
        second = run_kbk(overrides)
        out_first, err_first = first.communicate(timeout=420)
    finally:
        if first.poll() is None:
            first.kill()
    for code, err in ((first.returncode, err_first), (second.returncode, second.stderr)):
        assert code == 0, err[-3000:]
        assert "Traceback" not in err and "lock" not in err.lower()
    study = load_study(out, "koopman_dim_grid")
    assert finished_per_point(study, ["koopman.dim"]) == Counter({(d,): 1 for d in (8, 12, 16, 20, 24, 32)})
    owners = {t.user_attrs["kbk.worker"] for t in study.trials if t.state == TrialState.COMPLETE}
    assert len(owners) == 2  # both processes ran trials
    parent, children = parent_and_children(mlflow_runs(out))
    assert len(children) == 6 and parent.info.status == "FINISHED"
    # The summary is logged once, by the process that ended the parent: no metric twice at one step.
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    logged = [(key, m.step) for key in parent.data.metrics for m in client.get_metric_history(parent.info.run_id, key)]
    assert logged and len(logged) == len(set(logged)), sorted(logged)
