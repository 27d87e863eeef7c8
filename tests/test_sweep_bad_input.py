"""Bad sweep input, as a user types it: `python -m kbk.run -m ... paths.outputs=<tmp>` in a subprocess.

Each case must exit 2 with one `kbk: error:` line that names the key (no traceback), before the study, the sweep
folder or any MLflow run exists: nothing at all is written under the outputs folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import TINY, clean_env, kbk_command

from kbk.paths import PROJECT_ROOT

GRID = ["-m", "hparams_search=koopman_dim_grid"]
TPE = ["-m", "hparams_search=tpe_pruned"]

#: name -> (arguments, phrases the one line must hold).
CASES: dict[str, tuple[list[str], list[str]]] = {
    "unknown_function": ([*GRID, 'hydra.sweeper.params={koopman.dim: "foo(1,2)"}'], ["koopman.dim=foo(1,2)", "foo"]),
    "empty_choice": ([*GRID, 'hydra.sweeper.params={koopman.dim: "choice()"}'], ["koopman.dim=choice()", "empty"]),
    "reversed_interval": ([*TPE, "trainer.lr=interval(1,0)"], ["trainer.lr=interval(1,0)", "low end"]),
    "n_trials_zero": ([*TPE, "hydra.sweeper.n_trials=0"], ["hydra.sweeper.n_trials=0", "> 0"]),
    "n_trials_negative": ([*TPE, "hydra.sweeper.n_trials=-3"], ["hydra.sweeper.n_trials=-3", "> 0"]),
    "n_trials_null_without_grid": ([*TPE, "hydra.sweeper.n_trials=null"], ["hydra.sweeper.n_trials=null", "grid"]),
    "n_jobs_zero": ([*TPE, "hydra.sweeper.n_jobs=0"], ["hydra.sweeper.n_jobs=0"]),
    "direction_typo": ([*TPE, "hydra.sweeper.direction=maximise"], ["hydra.sweeper.direction", "maximise"]),
    "unknown_sampler": ([*TPE, "hydra.sweeper.sampler._target_=optuna.samplers.Foo"],
                        ["hydra.sweeper.sampler", "optuna.samplers.Foo"]),
    "unknown_pruner": ([*TPE, "hydra.sweeper.pruner._target_=optuna.pruners.Foo"],
                       ["hydra.sweeper.pruner", "optuna.pruners.Foo"]),
    "sampler_argument_typo": ([*TPE, "++hydra.sweeper.sampler.n_startup_trails=3"],
                              ["hydra.sweeper.sampler", "n_startup_trails"]),
    "not_a_sampler": ([*GRID, "koopman.dim=8,16", "hydra.sweeper.sampler._target_=optuna.pruners.NopPruner"],
                      ["hydra.sweeper.sampler._target_=optuna.pruners.NopPruner", "not an Optuna sampler"]),
    "bogus_storage": ([*TPE, "hydra.sweeper.storage=bogus://x"], ["hydra.sweeper.storage='bogus://x'", "scheme"]),
    "failure_rate_negative": ([*TPE, "hydra.sweeper.max_failure_rate=-1"], ["hydra.sweeper.max_failure_rate=-1"]),
    "failure_rate_above_one": ([*TPE, "hydra.sweeper.max_failure_rate=1.5"], ["hydra.sweeper.max_failure_rate=1.5"]),
    "study_name_escapes": ([*GRID, "koopman.dim=8,16", "hydra.sweeper.study_name=../../escape_x"],
                           ["hydra.sweeper.study_name", "../"]),
    "study_name_dots": ([*GRID, "koopman.dim=8,16", "hydra.sweeper.study_name=.."], ["hydra.sweeper.study_name='..'"]),
    "interval_in_grid": ([*GRID, "dmd.alpha=interval(0.1,0.5)"], ["grid", "dmd.alpha"]),
    "choices_the_schema_rejects": ([*GRID, "koopman.dim=choice(-1,-2,-3)"], ["koopman.dim=-1", "integer > 0"]),
    "one_bad_choice_of_several": ([*GRID, "koopman.dim=choice(8,16,-3)"], ["koopman.dim=-3", "integer > 0"]),
    "unknown_key_in_space": ([*GRID, "+koopman.dimm=choice(1,2)"], ["koopman.dimm", "not a kbk setting"]),
    "unknown_group_choice": ([*GRID, "schedule=choice(linear,nope)"], ["schedule=nope", "does not compose"]),
    "non_finite_choice": ([*GRID, "trainer.lr=choice(0.001,inf)"], ["trainer.lr=inf", "finite"]),
    "interval_end_out_of_range": ([*TPE, "dmd.alpha=interval(0.5,2.0)"], ["dmd.alpha=2.0", "(0, 1]"]),
    "unknown_metric": ([*TPE, "optimized_metric=val/nonexistent"], ["optimized_metric", "val/nonexistent"]),
    "preset_without_dash_m": (["hparams_search=tpe_pruned", "hydra.sweeper.n_trials=0"], ["hydra.sweeper.n_trials=0"]),
}

#: Unknown preset names: Hydra's compose error, which lists the available presets.
PRESET_CASES: dict[str, tuple[list[str], list[str]]] = {
    "unknown_hparams_search": (["hparams_search=nope"], ["hparams_search/nope", "koopman_dim_grid", "tpe_pruned"]),
    "hparams_search_typo": (["-m", "hparams_search=koopman_dim_grd"], ["koopman_dim_grd", "koopman_dim_grid"]),
    "unknown_experiment": (["experiment=nope"], ["experiment/nope", "seed_colab"]),
    "unknown_sampler_config": ([*TPE, "hydra/sweeper/sampler=nope"], ["hydra/sweeper/sampler/nope", "tpe", "grid"]),
}


def launch(tmp: Path, args: list[str]) -> tuple[subprocess.CompletedProcess, Path]:
    outputs = tmp / "outputs"
    flags = [a for a in args if a.startswith("-")]  # the case's values come after TINY's, which they may replace
    overrides = [*TINY, *(a for a in args if not a.startswith("-")), f"paths.outputs={outputs}"]
    proc = subprocess.run(kbk_command([*flags, *overrides]), capture_output=True, text=True, env=clean_env(),
                          cwd=PROJECT_ROOT, timeout=300)
    return proc, outputs


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Every case run once, three at a time (each is a short-lived process that imports and composes)."""
    cases = {**CASES, **PRESET_CASES}

    def one(name: str):
        return name, launch(tmp_path_factory.mktemp(name), cases[name][0])

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(pool.map(one, cases))


def assert_nothing_written(outputs: Path) -> None:
    written = sorted(str(p.relative_to(outputs)) for p in outputs.rglob("*")) if outputs.exists() else []
    assert not written, f"left behind: {written}"


@pytest.mark.parametrize("case", list(CASES))
def test_bad_sweep_input_is_one_line_before_anything_exists(case, outcomes):
    proc, outputs = outcomes[case]
    print(f"{case}: exit {proc.returncode}\n{proc.stderr.strip()}")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("kbk: error: "), proc.stderr[-3000:]
    missing = [p for p in CASES[case][1] if p not in lines[0]]
    assert not missing, f"the message lacks {missing}: {lines[0]}"
    assert_nothing_written(outputs)


@pytest.mark.parametrize("case", list(PRESET_CASES))
def test_an_unknown_preset_is_an_error_that_lists_the_presets(case, outcomes):
    proc, outputs = outcomes[case]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    missing = [p for p in PRESET_CASES[case][1] if p not in proc.stderr]
    assert not missing, f"stderr lacks {missing}:\n{proc.stderr}"
    assert "[kbk] step" not in proc.stdout  # nothing trained
    assert_nothing_written(outputs)


def test_presets_are_sweeps_without_dash_m():
    from conftest import compose_kbk

    for preset in ("koopman_dim_grid", "tpe_pruned", "ppl_vs_speed"):
        assert compose_kbk([f"hparams_search={preset}"], hydra=True).hydra.mode.name == "MULTIRUN"


@pytest.mark.slow
def test_ctrl_c_during_a_sweep_is_one_line(tmp_path):
    """SIGINT while a trial trains: exit 130, one line, no traceback; the trial goes back to the queue."""
    import optuna

    from kbk.sweep.storage import open_storage

    outputs = tmp_path / "outputs"
    args = [*GRID, *TINY, "koopman.dim=choice(8,16)", "trainer.epochs=1000", "trainer.max_steps=100000",
            "trainer.eval_every=2", f"paths.outputs={outputs}"]
    proc = subprocess.Popen(kbk_command(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=clean_env(), cwd=PROJECT_ROOT)
    try:
        for line in proc.stdout:
            if line.startswith("[kbk] step"):
                break
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    kbk_lines = [line for line in stderr.splitlines() if line.startswith("kbk: ")]
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and len(kbk_lines) == 1 and "interrupted" in kbk_lines[0], stderr[-3000:]
    study = optuna.load_study(study_name="koopman_dim_grid",
                              storage=open_storage(str(outputs / "optuna" / "koopman_dim_grid.journal")))
    assert all(t.state.name != "RUNNING" for t in study.trials)


def test_a_study_whose_creator_died_before_setting_it_up_is_taken_over_at_once(tmp_path, monkeypatch):
    """A study created by a process that died before writing its settings (the old `n_trials=0` case) is set up by
    the next sweeper at once: it does not wait `SETUP_WAIT_S` for a creator that is gone."""
    import optuna

    from kbk.sweep import optuna_sweeper
    from kbk.sweep.heartbeat import Worker
    from kbk.sweep.optuna_sweeper import CREATOR_ATTR, SETTINGS_ATTR, KbkOptunaSweeperImpl, SweepPlan
    from kbk.sweep.space import parse_space
    from kbk.sweep.storage import open_storage

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    storage = open_storage(str(tmp_path / "s.journal"))
    study = optuna.create_study(storage=storage, study_name="nt0")
    worker = Worker()
    study.set_user_attr(CREATOR_ATTR, {"host": worker.host, "pid": int(dead.stdout), "start_ticks": None,
                                       "beat": 0.0})

    def no_waiting(seconds: float) -> None:
        raise AssertionError("waited for a creator that is gone")

    monkeypatch.setattr(optuna_sweeper.time, "sleep", no_waiting)
    plan = SweepPlan(["val/ppl"], parse_space({"x": "choice(1,2)"}), {"_target_": "optuna.samplers.RandomSampler"},
                     False, {"_target_": "optuna.pruners.NopPruner"}, ["minimize"], {"a": "1"}, "nt0",
                     str(tmp_path / "s.journal"))
    loaded, created = KbkOptunaSweeperImpl()._open_study(storage, plan, worker)
    assert not created and loaded.study_name == "nt0" and SETTINGS_ATTR not in loaded.user_attrs
