"""Start-up phases: a run says what it is doing before its first step, as each phase finishes (issue 11)."""

from __future__ import annotations

import re

from tests.conftest import TINY

PHASE = re.compile(r"^\[kbk\] start-up +(\d+\.\d) s: (.*)$")


def test_a_run_prints_its_start_up_phases_in_order_with_rising_times(tmp_path, kbk_cli):
    result = kbk_cli([*TINY, f"paths.outputs={tmp_path / 'outputs'}", "tracking=none"])
    assert result.returncode == 0, result
    phases = [m.groups() for m in map(PHASE.match, result.stdout.splitlines()) if m]
    assert [text.split(" ")[0] for _, text in phases] == ["data", "model", "ready"], result.stdout[-3000:]
    assert phases[0][1].startswith("data synthetic: ") and "validation tokens" in phases[0][1]
    assert re.fullmatch(r"model resnet_bk: [\d,]+ parameters", phases[1][1])
    seconds = [float(s) for s, _ in phases]
    assert 0 < seconds[0] <= seconds[1] <= seconds[2]  # counted from the command, so the imports are in it
    # ... and all of it before the first evaluation line
    lines = result.stdout.splitlines()
    assert max(i for i, line in enumerate(lines) if PHASE.match(line)) < min(
        i for i, line in enumerate(lines) if line.startswith("[kbk] step "))


def test_each_trial_of_a_sweep_counts_its_start_up_from_its_own_start(tmp_path, kbk_cli):
    result = kbk_cli(["-m", *TINY, f"paths.outputs={tmp_path / 'outputs'}", "tracking=none", "seed=0,1"])
    assert result.returncode == 0, result
    phases = [(float(s), text) for s, text in (m.groups() for m in map(PHASE.match, result.stdout.splitlines()) if m)]
    assert [text.split(" ")[0] for _, text in phases] == ["data", "model", "ready"] * 2, result.stdout[-3000:]
    first_ready, second_data = phases[2][0], phases[3][0]
    # Counted from the sweep process's start, the second trial's first phase would come after all of the first
    # trial (its start-up, training and evaluation); counted from its own start it comes before the first trial
    # was even ready to train (which includes the interpreter's imports).
    assert second_data < first_ready, phases


def test_a_max_steps_that_the_epochs_cannot_reach_is_said(tmp_path, kbk_cli):
    overrides = [o for o in TINY if not o.startswith(("trainer.max_steps", "trainer.epochs"))]
    result = kbk_cli([*overrides, f"paths.outputs={tmp_path / 'outputs'}", "tracking=none", "trainer.epochs=1",
                      "trainer.max_steps=100000"])
    assert result.returncode == 0, result
    note = [line for line in result.stdout.splitlines() if "note: trainer.max_steps=100000" in line]
    assert len(note) == 1 and "training stops at step" in note[0] and "raise trainer.epochs" in note[0], note
    steps = int(note[0].split("training stops at step ")[1].split(" ")[0])
    assert f"steps={steps}," in result.stdout  # and it did stop there (the summary line)
