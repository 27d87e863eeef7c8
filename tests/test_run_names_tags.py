"""A run's labels (`tags`, `notes`), its MLflow name built from the overrides typed, and `study_name: auto`."""

from __future__ import annotations

import pytest
import test_sweep_e2e as e2e
from conftest import TINY, compose_kbk, mlflow_runs
from hydra.utils import instantiate
from omegaconf import open_dict
from test_run import run_in_process

from kbk.config import settings_of
from kbk.errors import ConfigError
from kbk.identity import IGNORED_KEYS, experiment_config
from kbk.sweep.optuna_sweeper import study_name_of, sweep_settings
from kbk.tracking.run_params import config_hash
from kbk.tracking.run_tags import run_name, user_tags

HASH = "0123456789abcdef"


def task_config(overrides: list[str]):
    """The config the task function gets (without the hydra node)."""
    cfg = compose_kbk(overrides)
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg


# ------------------------------------------------------------------------------------------------ run names

def test_run_name_is_the_overrides_that_change_the_computation():
    typed = ["model=small", "koopman.dim=512", "paths.outputs=/tmp/x", "tracking.uri=postgresql://u:secret@h/db",
             "tracking=none", "+hydra.sweeper.storage=sqlite:///s.db", "trainer.resume=true",
             "trainer.log_checkpoint=true", "tags=[baseline]", "notes=first try", "+model.extra=1"]
    assert run_name(typed, HASH, IGNORED_KEYS) == "model=small,koopman.dim=512,model.extra=1 #01234567"


def test_run_name_without_overrides_is_default_and_a_long_one_is_cut():
    assert run_name([], HASH, IGNORED_KEYS) == "default #01234567"
    assert run_name(["paths.outputs=/tmp/x"], HASH, IGNORED_KEYS) == "default #01234567"
    long = [f"koopman.dim={n}" for n in range(100, 120)]
    assert run_name(long, HASH, IGNORED_KEYS) == ",".join(long)[:60] + " #01234567"
    # A key that only starts like a left-out one is kept.
    assert run_name(["trainer.resume_from_x=1", "pathsy=2"], HASH, IGNORED_KEYS) == (
        "trainer.resume_from_x=1,pathsy=2 #01234567")


# ------------------------------------------------------------------------------------------------ tags, notes

def test_words_share_one_tag_and_key_values_are_their_own():
    assert user_tags(["baseline", "owner=ana", "wd", "ref=a=b"], "first try") == {
        "kbk.tags": "baseline,wd", "owner": "ana", "ref": "a=b", "mlflow.note.content": "first try"}
    assert user_tags([], None) == {}


def test_tags_and_notes_are_not_part_of_the_config_hash_nor_the_sweep_settings():
    plain = compose_kbk([*TINY], hydra=True)
    labelled = compose_kbk([*TINY, "tags=[baseline,'owner=ana']", "notes=first try"], hydra=True)
    assert list(labelled.tags) == ["baseline", "owner=ana"] and labelled.notes == "first try"
    assert config_hash(experiment_config(task_config([*TINY]))) == config_hash(
        experiment_config(task_config([*TINY, "tags=[baseline,'owner=ana']", "notes=first try"])))
    space = {"koopman.dim": "choice(8, 16)"}
    assert sweep_settings(plain, space, ["minimize"]) == sweep_settings(labelled, space, ["minimize"])
    # ... while a setting still changes both (the check above is not vacuous).
    other = compose_kbk([*TINY, "trainer.lr=0.002"], hydra=True)
    assert sweep_settings(plain, space, ["minimize"]) != sweep_settings(other, space, ["minimize"])


@pytest.mark.parametrize("tag", ["kbk.role=x", "mlflow.runName=x", "bad;key=1", "=value"])
def test_a_tag_that_mlflow_or_kbk_would_refuse_or_clash_with_is_a_config_error(tag):
    with pytest.raises(ConfigError, match=r"^tags=.*is not allowed: it must be a list of words or key=value"):
        settings_of(task_config([*TINY, f"tags=[ok,'{tag}']"]))


def test_a_tracked_run_carries_the_tags_notes_and_a_name_from_its_overrides(tmp_path):
    outputs = tmp_path / "outputs"
    overrides = [*TINY, f"paths.outputs={outputs}", "tags=[baseline,'owner=ana']", "notes=first try"]
    run_in_process(overrides, tmp_path / "job")
    [run] = mlflow_runs(outputs / "mlflow.db")
    tags = run.data.tags
    assert tags["kbk.tags"] == "baseline" and tags["owner"] == "ana"
    assert tags["mlflow.note.content"] == "first try"
    run_hash = config_hash(experiment_config(task_config([*TINY, f"paths.outputs={outputs}"])))
    assert tags["kbk.config_hash"] == run_hash  # the labels did not change the run's identity
    assert run.info.run_name == f"{','.join(TINY)[:60]} #{run_hash[:8]}"
    assert not {k for k in run.data.params if k.startswith(("tags", "notes"))}  # tags, not params


# ------------------------------------------------------------------------------------------------ study_name

def test_study_name_auto_is_the_preset_and_the_settings_hash():
    settings = {"koopman.dim": "8"}
    digest = config_hash(settings)[:10]
    assert study_name_of("auto", settings, "tpe_pruned") == f"tpe_pruned-{digest}"
    assert study_name_of("auto", settings, None) == f"kbk-{digest}"
    assert study_name_of(None, settings, "tpe_pruned") == f"kbk-{digest}"  # null stays what it was
    assert study_name_of("mine", settings, "tpe_pruned") == "mine"


def planned_study_name(tmp_path, overrides: list[str]) -> str:
    """The study a `python -m kbk.run -m <overrides>` sweep would open (the sweeper's own checks and naming)."""
    cfg = compose_kbk([f"paths.outputs={tmp_path}", *overrides], hydra=True)
    sweeper = instantiate(cfg.hydra.sweeper)
    sweeper.config = cfg  # what Hydra's `setup` stores; the launcher is not needed to plan
    return sweeper._checked_plan([]).study_name


def test_study_name_auto_resumes_the_same_command_and_changes_with_a_setting(tmp_path):
    command = ["hparams_search=tpe_pruned", "hydra.sweeper.study_name=auto"]
    name = planned_study_name(tmp_path, command)
    assert name.startswith("tpe_pruned-") and len(name) == len("tpe_pruned-") + 10
    assert planned_study_name(tmp_path, command) == name
    assert planned_study_name(tmp_path, [*command, "tags=[baseline]", "notes=again"]) == name
    assert planned_study_name(tmp_path, [*command, "trainer.lr=0.002"]) != name
    assert planned_study_name(tmp_path, ["hparams_search=tpe_pruned"]) == "tpe_pruned"  # presets keep theirs


@pytest.mark.slow
def test_every_trial_of_an_auto_named_sweep_carries_the_labels(hydra_sweep_runner, tmp_path):
    out = tmp_path / "out"
    overrides = ["hparams_search=koopman_dim_grid", "koopman.dim=choice(8,16)", "hydra.sweeper.study_name=auto",
                 "tags=[baseline,'owner=ana']", "notes=first try", *e2e.TINY, f"paths.outputs={out}"]
    with e2e.sweep(hydra_sweep_runner, overrides, tmp_path / "sweep"):
        pass
    parent, children = e2e.parent_and_children(e2e.mlflow_runs(out))
    study = parent.data.tags["kbk.sweep"]
    assert study.startswith("koopman_dim_grid-") and study != "koopman_dim_grid-"
    assert e2e.load_study(out, study).user_attrs  # the journal is named after the resolved study, not `auto`
    assert sorted(r.info.run_name for r in children) == ["trial-0", "trial-1"]
    for child in children:
        tags = child.data.tags
        assert (tags["kbk.tags"], tags["owner"], tags["mlflow.note.content"]) == ("baseline", "ana", "first try")
        assert tags["kbk.sweep"] == study
