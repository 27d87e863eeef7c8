"""A sweep's parent run and its trials log the same value for the same setting (enums as their plain values:
`ridge`, not `DMDEstimator.ridge`), so a parent's settings never form a group of their own in a comparison."""

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict

from kbk.paths import CONF_DIR
from kbk.run import register_configs  # noqa: F401 (registers the schema the config composes against)
from kbk.sweep.optuna_sweeper import sweep_settings
from kbk.tracking.run_params import flatten


def test_parent_and_trial_params_agree():
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["hparams_search=koopman_dim_grid", "dmd.estimator=ridge",
                                           "koopman.operator_update=both"], return_hydra_config=True)
    parent = sweep_settings(cfg, {"koopman.dim": "CategoricalDistribution(choices=(128, 256, 512))"}, ["minimize"])
    with open_dict(cfg):
        del cfg["hydra"]
    trial = flatten(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))  # what kbk.run logs
    assert parent["dmd.estimator"] == trial["dmd.estimator"] == "ridge"
    assert parent["koopman.operator_update"] == trial["koopman.operator_update"] == "both"
    shared = [k for k in parent if k in trial and "${" not in parent[k]]
    assert len(shared) > 50
    assert {k: parent[k] for k in shared} == {k: trial[k] for k in shared}
