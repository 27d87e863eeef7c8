"""Every file in conf/ composes with Hydra, converts to the typed schema, passes `validate`, and builds.

The choices are found by listing `conf/<group>/*.yaml` (nested groups such as `hydra/launcher` too), so a config
file added later is covered without touching this file.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from conftest import TINY_DATA, compose_kbk
from omegaconf import OmegaConf, open_dict

from kbk import build
from kbk.config import KbkConfig, validate
from kbk.paths import CONF_DIR

CHOICES = sorted(
    (str(path.parent.relative_to(CONF_DIR)), path.stem)
    for path in CONF_DIR.rglob("*.yaml")
    if path.parent != CONF_DIR
)
SWEEPER_PLUGIN = "hydra_plugins.kbk_sweeper"
#: What each choice needs besides itself to compose into a runnable config.
EXTRA = {
    ("data", "text"): ["data.path=/any/corpus.txt"],  # data=text has no default path
    ("model", "transformer"): ["koopman=off"],  # the Transformer baseline has no Koopman parts
}
#: README.md's config-group table: the choices each group must offer ("at least").
REQUIRED = {
    "model": {"tiny", "small", "base"},
    "koopman": {"default", "off"},
    "schedule": {"linear", "exponential", "step", "constant"},
    "dmd": {"default"},
    "data": {"synthetic", "text", "wikitext2"},
    "trainer": {"default"},
    "tracking": {"local", "server", "none"},
    "experiment": {"seed_colab"},
    "hparams_search": {"koopman_dim_grid", "schedule_grid", "dmd_buffer_grid", "ablation_grid"},
}


def sweeper_plugin_missing() -> str | None:
    """Why hparams_search presets cannot compose here, or None when they can."""
    try:
        found = importlib.util.find_spec(SWEEPER_PLUGIN) is not None
    except ModuleNotFoundError:
        found = False
    if found:
        return None
    return (f"the kbk_optuna sweeper plugin ({SWEEPER_PLUGIN}, from the repo's hydra_plugins/) is not importable "
            f"in this interpreter, so Hydra cannot find hydra/sweeper=kbk_optuna; reinstall kbk (pip install -e .) "
            f"or run pytest as `python -m pytest` from the repository root")


def without_hydra(cfg):
    """What Hydra hands the task function: the composed config minus its `hydra` node."""
    if "hydra" in cfg:
        with open_dict(cfg):
            del cfg["hydra"]
    return cfg


def settings_for(overrides: list[str], hydra: bool = False):
    cfg = compose_kbk(overrides, hydra=hydra)
    hydra_node = OmegaConf.to_container(cfg.hydra, resolve=False) if hydra else None
    settings = OmegaConf.to_object(without_hydra(cfg))
    assert isinstance(settings, KbkConfig)
    validate(settings)
    return settings, hydra_node


def test_the_config_groups_offer_the_choices_of_the_design():
    offered: dict[str, set[str]] = {}
    for group, choice in CHOICES:
        offered.setdefault(group, set()).add(choice)
    for group, required in REQUIRED.items():
        assert required <= offered.get(group, set()), f"conf/{group}/ lacks {sorted(required - offered[group])}"


@pytest.mark.parametrize(("group", "choice"), CHOICES, ids=[f"{g}={c}" for g, c in CHOICES])
def test_every_config_file_composes_validates_and_builds(group, choice, tmp_path):
    overrides = [f"{group}={choice}", *EXTRA.get((group, choice), [])]
    if group.startswith("hydra/sweeper/"):  # kbk's sampler and pruner groups are chosen inside its sweeper's config
        overrides.insert(0, "hydra/sweeper=kbk_optuna")
    needs_hydra = group == "hparams_search" or group.startswith("hydra/")
    if group == "hparams_search" and (reason := sweeper_plugin_missing()):
        pytest.skip(reason)
    settings, hydra_node = settings_for(overrides, hydra=needs_hydra)

    if group == "hparams_search":
        sweeper = hydra_node["sweeper"]
        assert sweeper["_target_"].endswith("KbkOptunaSweeper"), sweeper["_target_"]
        assert sweeper["params"], f"{choice} sweeps nothing"
        names = [settings.optimized_metric] if isinstance(settings.optimized_metric, str) else \
            list(settings.optimized_metric)
        directions = sweeper["direction"] if isinstance(sweeper["direction"], list) else [sweeper["direction"]]
        assert len(directions) == len(names), "one direction per optimized_metric name"
    if group.startswith("hydra/"):
        node = hydra_node
        for part in group.split("/")[1:]:
            node = node[part]
        if group == "hydra/job_logging":  # a logging dictConfig, not a plugin: every handler it uses exists
            logger = node["loggers"]["kbk"]
            assert node["version"] == 1 and set(logger["handlers"]) <= set(node["handlers"])
            assert {h["formatter"] for h in node["handlers"].values()} <= set(node["formatters"])
        else:
            assert node.get("_target_"), f"{group}={choice} names no plugin class"

    # Build what run.py builds (data only where no files or hub are needed).
    vocab = 64
    if settings.data.source == "synthetic" and group in ("data", "experiment"):
        data_settings, _ = settings_for([*overrides, *TINY_DATA, "model.n_seq=16", "trainer.batch_size=4"])
        data = build.corpus(data_settings)
        train, val = build.batches(data_settings, data)
        assert len(train) > 0 and len(val) > 0 and data.loss_floor(16) > 0
        vocab = data.vocab_size
    model = build.model(settings, vocab_size=vocab)
    assert sum(p.numel() for p in model.parameters()) > 0
    options = build.trainer_options(settings)
    assert options.epochs == settings.trainer.epochs
    schedule = build.schedule(settings, total_steps=100)
    assert schedule.max_weight == settings.schedule.max_weight
    if settings.koopman.enabled:
        assert settings.koopman.dim > 0 and hasattr(model, "koopman_dynamics")


def test_text_data_without_a_path_composes_but_cannot_pass_unnoticed():
    """data=text has no default path; with one it validates (loading it is test_data_text's job)."""
    settings, _ = settings_for(["data=text"])
    assert settings.data.source == "text" and not settings.data.path
    settings, _ = settings_for(["data=text", "data.path=/some/folder"])
    assert settings.data.path == "/some/folder" and settings.data.tokenizer


def test_wikitext2_settings_validate_with_a_local_copy(tmp_path):
    settings, _ = settings_for(["data=wikitext2", f"data.path={tmp_path}"])
    assert settings.data.source == "wikitext2" and settings.data.path == str(tmp_path)
    assert (settings.data.tokenizer, settings.data.max_vocab, settings.data.eos) == ("word", 29_999, False)  # seed's


def sweep_values(key: str, value: str) -> list:
    """The concrete values a sweep parameter can take (both ends of an interval)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    override = OverridesParser.create().parse_override(f"{key}={value}")
    if override.is_discrete_sweep():
        return list(override.sweep_iterator())
    if override.is_sweep_override():  # interval(low, high), possibly tagged log/int
        interval = override.value()
        return [interval.start, interval.end]
    return [override.value()]


@pytest.mark.parametrize("preset", sorted(c for g, c in CHOICES if g == "hparams_search"))
def test_every_value_a_sweep_preset_can_try_is_a_valid_config(preset):
    """A grid point or search bound that fails validation would only show up hours into a sweep."""
    if reason := sweeper_plugin_missing():
        pytest.skip(reason)
    _, hydra_node = settings_for([f"hparams_search={preset}"], hydra=True)
    space = {key: sweep_values(key, str(spec)) for key, spec in hydra_node["sweeper"]["params"].items()}
    for key, values in space.items():
        if (CONF_DIR / key).is_dir():  # a config-group choice: every value must be a file of the group
            missing = [v for v in values if not (CONF_DIR / key / f"{v}.yaml").is_file()]
            assert not missing, f"{preset}: {key} has no choice(s) {missing}"
    # Compose as few configs as it takes to try every value of every parameter once.
    for i in range(max(len(values) for values in space.values())):
        point = {key: values[i % len(values)] for key, values in space.items()}
        settings, _ = settings_for([f"hparams_search={preset}", *(f"{k}={v}" for k, v in point.items())],
                                   hydra=True)
        plain = OmegaConf.structured(settings)
        for key, value in point.items():
            if not (CONF_DIR / key).is_dir():
                got = OmegaConf.select(plain, key)
                assert got == (pytest.approx(value) if isinstance(value, float) else value), (key, got, value)


def test_seed_colab_preset_is_the_seeds_colab_run():
    settings, _ = settings_for(["experiment=seed_colab"])
    m, k, d, s, t = settings.model, settings.koopman, settings.dmd, settings.schedule, settings.trainer
    assert (m.d_model, m.n_layers, m.n_seq, m.num_experts, m.top_k) == (64, 4, 128, 4, 1)
    assert k.dim == 256 and k.enabled
    assert (d.buffer_size, d.alpha) == (100, 0.1)
    assert t.epochs == 5 and t.batch_size == 32 and t.lr == 1e-3
    assert (s.warmup, s.unit, s.max_weight) == (3, "epoch", 0.1)  # Koopman from (0-based) epoch 3, up to 0.1
    assert settings.data.source == "wikitext2" and (settings.data.max_vocab, settings.data.eos) == (29_999, False)
    model = build.model(settings, vocab_size=30_000)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"seed_colab model with vocab 30,000: {n_params:,} parameters")
    assert n_params == 5_066_952


def test_a_preset_overrides_the_defaults_and_the_command_line_overrides_the_preset():
    """`experiment=seed_colab` swaps model=tiny for small; `model=tiny` typed beside it wins, and the preset's own
    values (causal: false) still apply on top of the chosen group file."""
    settings, _ = settings_for(["experiment=seed_colab"])
    assert (settings.model.n_layers, settings.model.n_seq) == (4, 128)
    settings, _ = settings_for(["experiment=seed_colab", "model=tiny"])
    assert (settings.model.n_layers, settings.model.n_seq, settings.model.causal) == (2, 64, False)
    settings, _ = settings_for(["experiment=seed_colab", "koopman.dim=64"])
    assert settings.koopman.dim == 64 and settings.name == "seed_colab"


def test_conf_holds_only_yaml_files_hydra_can_see():
    strays = [p for p in CONF_DIR.rglob("*") if p.is_file() and p.suffix not in (".yaml",)]
    assert not strays, f"files Hydra ignores in conf/: {[str(Path(p).relative_to(CONF_DIR)) for p in strays]}"
