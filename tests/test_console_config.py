"""The config as printed (`kbk.console.shown_config` / `print_config`): the selected data source's options (its
nulls too: "that source's default"), no other source's nulls, enums as their values; printed only, so the config
hash is unchanged; in a sweep, later trials print what differs from the first (issue 12)."""

from __future__ import annotations

import logging

import pytest

from kbk import console, identity
from tests.conftest import compose_kbk


@pytest.mark.parametrize("source, kept, dropped", [
    ("text", ["path", "tokenizer", "prepare_command", "cache_dir"], ["n_states", "hf_cache_dir", "hub_timeout_s"]),
    ("wikitext2", ["path", "hf_cache_dir", "hub_timeout_s", "cache_dir"], ["n_states", "val_fraction",
                                                                           "prepare_command"]),
    ("synthetic", ["n_states", "vocab_size"], ["path", "tokenizer", "cache_dir", "hf_cache_dir"]),
])
def test_only_the_selected_sources_null_options_are_shown(source, kept, dropped):
    cfg = compose_kbk([f"data={source}", "data.seed=null"] if source == "synthetic" else [f"data={source}"])
    data = console.shown_config(cfg)["data"]
    assert data["source"] == source
    assert all(key in data for key in kept), data
    assert not any(key in data for key in dropped), data
    if source == "synthetic":  # a null option of the selected source stays ("that source's default")
        assert data["seed"] is None


def test_enums_are_their_values_and_printing_changes_neither_the_config_nor_its_hash(caplog):
    cfg = compose_kbk(["koopman.operator_update=dmd", "schedule=step"])
    before, yaml_before = identity.run_hash(cfg), str(cfg)
    shown = console.shown_config(cfg)
    assert shown["koopman"]["operator_update"] == "dmd" and shown["schedule"]["type"] == "step"
    with caplog.at_level(logging.INFO, logger="kbk"):
        console.print_config(cfg)
    assert "  operator_update: dmd\n" in caplog.records[-1].getMessage()
    assert identity.run_hash(cfg) == before and str(cfg) == yaml_before


def test_a_sweeps_later_trials_print_only_what_differs_from_the_first(caplog, tmp_path):
    first, second = compose_kbk(["koopman.dim=16"]), compose_kbk(["koopman.dim=64", "data.n_states=8"])
    with caplog.at_level(logging.INFO, logger="kbk"):
        console.print_config(first, sweep_dir=tmp_path / "sweep")
        console.print_config(second, sweep_dir=tmp_path / "sweep")
        console.print_config(first, sweep_dir=tmp_path / "sweep")
        console.print_config(second, sweep_dir=tmp_path / "next sweep")  # another command in this process
    full, changed, same, next_full = (r.getMessage() for r in caplog.records[-4:])
    assert full.startswith("config:\nmodel:\n") and "  dim: 16\n" in full
    assert changed == "config: as printed above, except koopman.dim=64 data.n_states=8"
    assert same == "config: as printed above"
    assert next_full.startswith("config:\nmodel:\n") and "  dim: 64\n" in next_full
