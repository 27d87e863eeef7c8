"""One definition of "same experiment" (`kbk.identity`): a run's config hash and a study's stored settings must
stay what kbk computed before (checkpoint folders, resumes and stored studies depend on them), and ignore the same
keys."""

from __future__ import annotations

import pytest
from conftest import TINY, compose_kbk
from omegaconf import open_dict

from kbk.identity import IGNORED_KEYS, changed_settings, experiment_config, run_hash
from kbk.sweep.optuna_sweeper import sweep_settings
from kbk.sweep.space import parse_space
from kbk.tracking.run_params import config_hash

#: Overrides → (the run's config hash, a hash of the koopman_dim_grid study's stored settings), both computed by
#: kbk before `kbk.identity` existed (commit 4650587).
BEFORE = {
    (): ("cbdb62ca1af1821c", "33e0a3b1b9602e08"),
    ("model=small", "koopman=off"): ("f224e73a3bd4dfa4", "d94682640b7eb866"),
    (*TINY, "tags=[a,'b=c']", "notes=x", "trainer.resume=true", "tracking=none", "paths.outputs=/tmp/x"):
        ("22f98c4d1fa201f0", "2e0295d1f6f125c7"),
    ("schedule=step", "dmd.estimator=ridge", "dmd.alpha=0.2", "optimized_metric=[val/ppl,perf/step_ms]"):
        ("d466aec6d5924eea", "b22353320d586b2e"),
    ("experiment=seed_colab",): ("9469372ea45ffd51", "e4aef05138b8d0f5"),
}


def task_config(overrides):
    cfg = compose_kbk(overrides)
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg


@pytest.mark.parametrize("overrides", list(BEFORE), ids=lambda o: " ".join(o)[:40] or "default")
def test_the_run_hash_and_the_stored_settings_are_what_kbk_computed_before(overrides):
    run_before, settings_before = BEFORE[overrides]
    assert run_hash(task_config(list(overrides))) == run_before
    cfg = compose_kbk(["hparams_search=koopman_dim_grid", *overrides], hydra=True)
    space = parse_space({"koopman.dim": "choice(128, 256, 512)"}).signature()
    assert config_hash(sweep_settings(cfg, space, ["minimize"])) == settings_before


def test_locations_labels_and_resume_settings_are_not_the_experiment():
    plain = {"model": {"d_model": 8}, "paths": {"outputs": "/a"}, "tracking": {"uri": "x"}, "hydra": {"run": 1},
             "tags": ["a"], "notes": "n", "trainer": {"lr": 0.1, "resume": True, "log_checkpoint": True}}
    assert experiment_config(plain) == {"model": {"d_model": 8}, "trainer": {"lr": 0.1}}
    assert plain["trainer"]["resume"] is True  # the caller's config is not changed
    assert set(IGNORED_KEYS) >= {"paths", "tracking", "hydra", "tags", "notes", "trainer.resume"}
    assert run_hash(plain) == run_hash({**plain, "paths": {"outputs": "/b"}, "notes": "other"})
    assert run_hash(plain) != run_hash({**plain, "model": {"d_model": 16}})


def test_a_key_the_study_lacks_is_no_difference_at_its_default():
    stored = {"model.d_model": "64", "sweep.directions": '["minimize"]'}
    now = {**stored, "koopman.new_flag": "False"}
    assert changed_settings(stored, now, defaults={"koopman.new_flag": "False"}) == []
    # Set to something else, or without a known default, it is a different experiment.
    assert changed_settings(stored, {**now, "koopman.new_flag": "True"}, {"koopman.new_flag": "False"}) == [
        "koopman.new_flag"]
    assert changed_settings(stored, now) == ["koopman.new_flag"]
    # A key the study has is compared as it is, default or not; so is a key kbk no longer has.
    assert changed_settings(stored, {**now, "model.d_model": "32"}, {"model.d_model": "32"}) == ["koopman.new_flag",
                                                                                                 "model.d_model"]
    assert changed_settings({**stored, "gone": "1"}, stored, {"gone": "1"}) == ["gone"]
