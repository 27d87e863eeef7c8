"""The sweeper's inputs: search-space grammar, value formatting, samplers/pruners/storages by name, the settings a
study is bound to, and every `hparams_search` preset composing into a sweeper kbk can run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from kbk.config import register_configs
from kbk.errors import ConfigError
from kbk.paths import CONF_DIR, register_resolvers
from kbk.sweep.factories import (
    config_of,
    directions_of,
    is_grid,
    make_pruner,
    make_sampler,
    pruner_from_env,
    pruner_to_env,
)
from kbk.sweep.optuna_sweeper import check_settings, sweep_settings
from kbk.sweep.space import format_value, params_key, parse_space
from kbk.sweep.storage import default_storage, resolve_storage

register_configs()
register_resolvers()

PRESETS = sorted(p.stem for p in (CONF_DIR / "hparams_search").glob("*.yaml"))


def compose_cfg(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


# -------------------------------------------------------------------------------------------------- space


def test_grammar_maps_to_optuna_distributions():
    space = parse_space(
        {
            "koopman.dim": "choice(128, 256, 512)",
            "schedule": "choice(linear, exponential, step)",
            "dmd.buffer_size": "range(100, 1000, 300)",
            "dmd.alpha": "interval(0.05, 0.5)",
            "trainer.lr": "tag(log, interval(1e-4, 1e-2))",
            "model.n_layers": "tag(int, interval(1, 4))",
            "schedule.max_weight": "range(0.1, 0.4, 0.1)",
            "trainer.max_steps": 200,
        }
    )
    d = space.distributions
    assert d["koopman.dim"] == CategoricalDistribution((128, 256, 512))
    assert d["schedule"] == CategoricalDistribution(("linear", "exponential", "step"))
    assert d["dmd.buffer_size"] == IntDistribution(100, 700, step=300)
    assert space.values["dmd.buffer_size"] == [100, 400, 700]
    assert d["dmd.alpha"] == FloatDistribution(0.05, 0.5)
    assert d["trainer.lr"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert d["model.n_layers"] == IntDistribution(1, 4)
    assert space.values["schedule.max_weight"] == [0.1, 0.2, 0.3]
    assert space.fixed == ["trainer.max_steps=200"]
    assert space.overrides({"koopman.dim": 256, "schedule": "step", "trainer.lr": 0.001}) == [
        "koopman.dim=256", "schedule=step", "trainer.lr=0.001", "trainer.max_steps=200"]


def test_command_line_sweeps_and_values_win_over_the_preset():
    space = parse_space({"koopman.dim": "choice(128, 256)", "trainer.max_steps": 200},
                        ["koopman.dim=8,16", "trainer.max_steps=6", "+extra.key=choice(1,2)", "seed=1"])
    assert space.values["koopman.dim"] == [8, 16]
    assert space.fixed == ["trainer.max_steps=6", "seed=1"]
    assert space.overrides({"koopman.dim": 8, "extra.key": 2})[:2] == ["koopman.dim=8", "+extra.key=2"]


def test_bad_sweeps_are_config_errors():
    with pytest.raises(ConfigError, match="low end"):
        parse_space({"a": "interval(2, 1)"})
    with pytest.raises(ConfigError, match="log interval"):
        parse_space({"a": "tag(log, interval(0, 1))"})
    with pytest.raises(ConfigError, match="twice"):
        parse_space({"a": "choice(1, 1)"})
    with pytest.raises(ConfigError, match="Cannot parse"):
        parse_space({"a": "choice(1,"})
    with pytest.raises(ConfigError, match="empty"):
        parse_space({"a": "range(5, 1)"})


@pytest.mark.parametrize("value", ["linear", 128, 1e-05, 0.1, -3, True, False, "a b", "it's", "128", "true",
                                   "/abs/path/x.journal", '{"name":"median","n":3}', "3f2a9c", "sqlite:////x.db"])
def test_formatted_values_read_back_identically(value):
    override = OverridesParser.create().parse_override(f"key={format_value(value)}")
    parsed = override.value()
    assert parsed == value and type(parsed) is type(value)


def test_params_key_is_order_free_and_type_aware():
    assert params_key({"a": 1, "b": "x"}) == params_key({"b": "x", "a": 1})
    assert params_key({"a": 1}) != params_key({"a": 1.0}) != params_key({"a": "1"})
    assert params_key({"a": 0.1}) != params_key({"a": 0.1000001})


# --------------------------------------------------------------------------------------- samplers, storage


def test_samplers_and_pruners_are_built_from_their_targets():
    tpe = make_sampler({"_target_": "optuna.samplers.TPESampler", "seed": 1, "n_startup_trials": 3})
    assert isinstance(tpe, optuna.samplers.TPESampler) and tpe._n_startup_trials == 3
    nsga = make_sampler({"_target_": "optuna.samplers.NSGAIISampler", "seed": 1, "population_size": 4})
    assert isinstance(nsga, optuna.samplers.NSGAIISampler)
    # null takes the class's default; the grid is kbk's own (a seeded random sampler stands in)
    assert isinstance(make_sampler(config_of({"_target_": "optuna.samplers.CmaEsSampler", "sigma0": None},
                                             "sampler")), optuna.samplers.CmaEsSampler)
    assert is_grid({"_target_": "optuna.samplers.GridSampler"}) and not is_grid({"_target_": "x.TPESampler"})
    assert isinstance(make_sampler({"_target_": "optuna.samplers.GridSampler", "_partial_": True}),
                      optuna.samplers.RandomSampler)
    with pytest.raises(ConfigError, match="cannot build optuna.samplers.Annealing"):
        make_sampler({"_target_": "optuna.samplers.Annealing"})
    with pytest.raises(ConfigError, match="cannot build.*no_such_argument"):
        make_sampler({"_target_": "optuna.samplers.TPESampler", "no_such_argument": 1})
    with pytest.raises(ConfigError, match="is not an Optuna sampler"):
        make_sampler({"_target_": "optuna.pruners.MedianPruner"})
    spec = {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 2, "n_warmup_steps": 5}
    pruner = pruner_from_env(pruner_to_env(spec))
    assert isinstance(pruner, optuna.pruners.MedianPruner) and pruner._n_warmup_steps == 5
    assert isinstance(pruner_from_env(None), optuna.pruners.NopPruner)
    assert isinstance(make_pruner({"_target_": "optuna.pruners.HyperbandPruner", "min_resource": 2,
                                   "max_resource": 100}), optuna.pruners.HyperbandPruner)


def test_the_name_of_a_group_config_stands_for_its_target():
    """Presets written before `_target_` (`sampler: {name: grid}`) keep working: the name picks the group's config."""
    assert config_of({"name": "grid", "seed": None}, "sampler") == {"_target_": "optuna.samplers.GridSampler"}
    assert config_of({"_target_": "optuna.samplers.TPESampler", "name": "random", "seed": 3}, "sampler") == {
        "_target_": "optuna.samplers.RandomSampler", "seed": 3}
    assert isinstance(pruner_from_env(pruner_to_env({"name": "median", "n_startup_trials": 1})),
                      optuna.pruners.MedianPruner)
    with pytest.raises(ConfigError, match="'annealing' is not a sampler kbk knows: use one of .*tpe"):
        config_of({"name": "annealing"}, "sampler")
    with pytest.raises(ConfigError, match="hydra/sweeper/pruner=<.*median"):
        config_of("median", "pruner")


@pytest.mark.parametrize("sampler", ["tpe", "random", "cmaes", "nsgaii", "qmc", "gp", "grid"])
def test_the_group_configs_and_the_official_plugins_build(sampler):
    """`hydra/sweeper/sampler=<name>` composes and builds; so does the TPE config of Hydra's Optuna plugin as is."""
    cfg = compose_cfg(["hparams_search=koopman_dim_grid", f"hydra/sweeper/sampler={sampler}",
                       "hydra.sweeper.sampler.seed=3"])
    spec = config_of(cfg.hydra.sweeper.sampler, "sampler")
    assert spec["seed"] == 3 and spec["_target_"].startswith("optuna.samplers.")
    make_sampler(spec)
    official_tpe = {"_target_": "optuna.samplers.TPESampler", "seed": None, "consider_prior": True,
                    "prior_weight": 1.0, "consider_magic_clip": True, "consider_endpoints": False,
                    "n_startup_trials": 10, "n_ei_candidates": 24, "multivariate": False,
                    "warn_independent_sampling": True}
    assert isinstance(make_sampler(config_of(official_tpe, "sampler")), optuna.samplers.TPESampler)


def test_directions_match_the_metrics():
    assert directions_of("minimize", ["val/ppl"]) == ["minimize"]
    assert directions_of("maximize", ["a/b", "c/d"]) == ["maximize", "maximize"]
    assert directions_of(["minimize", "maximize"], ["a/b", "c/d"]) == ["minimize", "maximize"]
    with pytest.raises(ConfigError, match="one direction per metric"):
        directions_of(["minimize", "minimize"], ["val/ppl"])
    with pytest.raises(ConfigError, match="minimize or maximize"):
        directions_of("down", ["val/ppl"])


def test_storage_strings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_storage(None, tmp_path, "my study") == default_storage(tmp_path, "my study")
    assert default_storage(tmp_path, "my study") == str(tmp_path / "optuna" / "my_study.journal")
    assert resolve_storage("runs/s.journal", tmp_path, "s") == str(tmp_path / "runs" / "s.journal")
    assert resolve_storage("sqlite:///o.db", tmp_path, "s") == f"sqlite:///{tmp_path / 'o.db'}"
    assert resolve_storage("postgresql+psycopg2://u@h/db", tmp_path, "s") == "postgresql+psycopg2://u@h/db"
    assert resolve_storage("postgresql://u@h/db", tmp_path, "s").endswith("://u@h/db")
    with pytest.raises(ConfigError, match="in-memory"):
        resolve_storage("sqlite://", tmp_path, "s")
    with pytest.raises(ConfigError, match="unknown scheme"):
        resolve_storage("redis://h", tmp_path, "s")


# --------------------------------------------------------------------------------------------- settings


def test_a_study_refuses_a_sweep_with_other_settings(tmp_path):
    base = compose_cfg(["hparams_search=koopman_dim_grid"])
    moved = compose_cfg(["hparams_search=koopman_dim_grid", f"paths.outputs={tmp_path}", "tracking=none"])
    other = compose_cfg(["hparams_search=koopman_dim_grid", "model.d_model=32"])
    space = parse_space({"koopman.dim": "choice(128, 256, 512)"}).signature()
    assert space == parse_space({"koopman.dim": "choice(128,256,512)"}).signature()  # spacing does not matter
    settings = sweep_settings(base, space, ["minimize"])
    assert settings == sweep_settings(moved, space, ["minimize"])  # locations may change between resumes
    assert "koopman.dim" in settings and "sweep.params.koopman.dim" in settings
    study = optuna.create_study(study_name="koopman_dim_grid")
    study.set_user_attr("kbk.settings", settings)
    check_settings(study, sweep_settings(moved, space, ["minimize"]), "x.journal")
    with pytest.raises(ConfigError, match=r"model.d_model \(study: 64, now: 32\).*study_name"):
        check_settings(study, sweep_settings(other, space, ["minimize"]), "x.journal")
    with pytest.raises(ConfigError, match="sweep.params.koopman.dim"):
        check_settings(study, sweep_settings(base, parse_space({"koopman.dim": "choice(1, 2)"}).signature(),
                                             ["minimize"]), "x.journal")


def test_a_study_made_before_a_key_existed_resumes_while_the_key_keeps_its_default(tmp_path):
    """The real sweeper on a finished grid study whose stored settings lack a key (kbk gained it since): the same
    command resumes it (and finds it done); the key set to another value is another experiment, refused."""
    from conftest import TINY, clean_env, kbk_command
    from optuna.trial import create_trial

    from kbk.paths import PROJECT_ROOT
    from kbk.sweep.storage import open_storage

    outputs = tmp_path / "outputs"
    args = [*(o for o in TINY if not o.startswith("koopman.dim=")), "koopman.dim=8,16", "tracking=none",
            f"paths.outputs={outputs}"]
    cfg = compose_cfg(["hparams_search=koopman_dim_grid", *(a for a in args if a != "koopman.dim=8,16")])
    space = parse_space({"koopman.dim": "choice(128, 256, 512)"}, ["koopman.dim=8,16"])
    settings = sweep_settings(cfg, space.signature(), ["minimize"])
    older = {k: v for k, v in settings.items() if k != "koopman.terms_interval"}
    assert settings["koopman.terms_interval"] == "1"  # its default
    study = optuna.create_study(study_name="koopman_dim_grid",
                                storage=open_storage(str(outputs / "optuna" / "koopman_dim_grid.journal")))
    study.set_user_attr("kbk.settings", older)
    for dim in (8, 16):
        study.add_trial(create_trial(params={"koopman.dim": dim}, distributions=space.distributions, value=1.0))

    env = {k: v for k, v in clean_env().items() if not k.startswith("KBK_OPTUNA_")}  # this study, not another

    def sweep(*extra):
        return subprocess.run(kbk_command(["-m", "hparams_search=koopman_dim_grid", *args, *extra]), cwd=PROJECT_ROOT,
                              env=env, capture_output=True, text=True, timeout=300)

    resumed = sweep()
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "every grid point has a finished trial" in resumed.stderr + resumed.stdout
    refused = sweep("koopman.terms_interval=2")
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "koopman.terms_interval (study: <unset>, now: 2)" in refused.stderr


# ---------------------------------------------------------------------------------------------- presets


def test_the_expected_presets_exist():
    assert set(PRESETS) >= {"koopman_dim_grid", "schedule_grid", "dmd_buffer_grid", "ablation_grid", "tpe_pruned",
                            "ppl_vs_speed"}


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_composes_into_a_runnable_sweeper(preset):
    cfg = compose_cfg([f"hparams_search={preset}"])
    assert cfg.hydra.sweeper._target_ == "hydra_plugins.kbk_sweeper.kbk_optuna_sweeper.KbkOptunaSweeper"
    sweeper = instantiate(cfg.hydra.sweeper)
    space = parse_space(sweeper.params)
    assert space.distributions
    metrics = cfg.optimized_metric if isinstance(cfg.optimized_metric, str) else list(cfg.optimized_metric)
    directions_of(sweeper.direction, [metrics] if isinstance(metrics, str) else metrics)
    spec = config_of(cfg.hydra.sweeper.sampler, "sampler")
    make_sampler(spec)
    make_pruner(config_of(cfg.hydra.sweeper.pruner, "pruner"))
    if is_grid(spec):
        assert space.grid()
    assert cfg.hydra.sweeper.study_name == preset
    assert Path(str(cfg.hydra.sweep.dir)).name == preset  # reruns and parallel workers share one sweep folder
    # Every trial's overrides compose (an unknown key or group choice would fail each trial).
    first = {n: (v[0] if v else (d.low if hasattr(d, "low") else None))
             for (n, v), d in zip(space.values.items(), space.distributions.values(), strict=True)}
    compose_cfg([f"hparams_search={preset}", *space.overrides(first)])


def test_grid_presets_cover_the_ablation():
    sizes = {}
    for preset in ("koopman_dim_grid", "schedule_grid", "dmd_buffer_grid", "ablation_grid"):
        sweeper = instantiate(compose_cfg([f"hparams_search={preset}"]).hydra.sweeper)
        sizes[preset] = len(parse_space(sweeper.params).grid())
    assert sizes == {"koopman_dim_grid": 3, "schedule_grid": 3, "dmd_buffer_grid": 3, "ablation_grid": 81}


def test_slurm_launcher_preset_composes():
    cfg = compose_cfg(["hparams_search=ablation_grid", "hydra/launcher=slurm", "hydra.launcher.partition=gpu"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.array_parallelism) == ("gpu", 1, 16)


def test_hydra_discovers_the_sweeper_plugin():
    from hydra.core.plugins import Plugins
    from hydra.plugins.sweeper import Sweeper

    names = [p.__name__ for p in Plugins.instance().discover(Sweeper)]
    assert "KbkOptunaSweeper" in names


def test_the_installed_package_exposes_the_plugin_outside_the_checkout(tmp_path):
    """Hydra finds the sweeper from any folder, not only when the checkout is the current folder (needs setup.cfg's
    `packages = find_namespace:`: `find:` skips `hydra_plugins`, which must have no __init__.py)."""
    code = ("from hydra.core.plugins import Plugins; from hydra.plugins.sweeper import Sweeper; "
            "print(sorted(p.__name__ for p in Plugins.instance().discover(Sweeper)))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "KbkOptunaSweeper" in result.stdout
