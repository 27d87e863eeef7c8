"""python -m kbk.clean on an outputs folder of real runs: a finished one (last.pt, best.pt, a profile trace), a killed
one that can resume, one a live process holds, and a checkpoint of an older store in its config's index folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from conftest import TINY, clean_env
from test_checkpoint_folders import StopAt
from test_run import run_in_process

from kbk import build
from kbk.clean import human, main
from kbk.paths import PROJECT_ROOT
from kbk.tracking.resume import checkpoint_folder, read_run_record
from kbk.training.checkpoint import CheckpointFolderLock


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The outputs folder, built once (tests clean copies of it): runs/finished, runs/killed, runs/live and an
    index folder of an older store holding its last.pt."""
    outputs = tmp_path_factory.mktemp("clean") / "outputs"
    runs = outputs / "runs"
    base = [*TINY, "tracking=none", f"paths.outputs={outputs}"]
    run_in_process([*base, "seed=1", "trainer.save_best=true", "trainer.profile_steps=2"], runs / "finished", True)
    with pytest.MonkeyPatch.context() as patch:
        original = build.callbacks
        patch.setattr(build, "callbacks", lambda s, o: [*original(s, o), StopAt(9, KeyboardInterrupt())])
        with pytest.raises(KeyboardInterrupt):
            run_in_process([*base, "seed=2"], runs / "killed", True)
    run_in_process([*base, "seed=3"], runs / "live", True)
    run_in_process([*base, "seed=4"], runs / "older", True)
    older = index_of(outputs, runs / "older")  # the layout before run folders: last.pt in the index folder
    shutil.move(runs / "older" / "checkpoints" / "last.pt", older / "last.pt")
    (older / "run.json").write_text(json.dumps({"run_id": None, "output_dir": str(runs / "older")}))
    shutil.rmtree(runs / "older" / "checkpoints")
    return outputs


def index_of(outputs, run_folder):
    return outputs / "checkpoints" / read_run_record(run_folder / "checkpoints")["config_hash"]


@pytest.fixture
def outputs(store, tmp_path):
    copy = tmp_path / "outputs"
    shutil.copytree(store, copy)
    return copy


@pytest.fixture
def live(outputs):
    """The lock a live run of runs/live holds, held by this test while kbk.clean looks."""
    with CheckpointFolderLock(index_of(outputs, outputs / "runs" / "live")):
        yield


def files(outputs) -> set[str]:
    return {str(p.relative_to(outputs)) for p in outputs.rglob("*") if p.is_file()}


def clean(capsys, outputs, *args: str) -> str:
    assert main(["--outputs", str(outputs), *args]) == 0
    return capsys.readouterr().out


def test_a_dry_run_lists_what_would_go_and_what_stays_and_deletes_nothing(outputs, live, capsys):
    before = files(outputs)
    older = checkpoint_folder(next(i for i in (outputs / "checkpoints").iterdir() if (i / "last.pt").exists()))
    text = clean(capsys, outputs)
    assert files(outputs) == before
    would, kept = text.split("\nkept:\n")
    assert "checkpoints of a finished run: runs/finished/checkpoints (best.pt, last.pt)" in would
    assert "profile trace (debug=profile): runs/finished/profile" in would
    assert f"checkpoints of a finished run: {older.relative_to(outputs)} (last.pt)" in would
    assert "checkpoints of an unfinished run: it can resume (--include-unfinished deletes it): " \
           "runs/killed/checkpoints (last.pt)" in kept
    assert "checkpoints of a live run: runs/live/checkpoints (last.pt)" in kept
    going = [outputs / "runs/finished/checkpoints/best.pt", outputs / "runs/finished/checkpoints/last.pt",
             outputs / "runs/finished/profile", older / "last.pt"]
    size = sum(p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*")) for p in going)
    assert f"total: {human(size)} would be deleted (3 items)" in text
    folders = sum(f.stat().st_size for f in (outputs / "runs").rglob("*") if f.is_file())
    assert f"run folders: 4, {human(folders)} in all" in text


def test_yes_deletes_finished_checkpoints_and_traces_but_not_what_a_run_needs(outputs, live, capsys):
    text = clean(capsys, outputs, "--yes")
    assert "deleted (3 items)" in text
    left = files(outputs)
    assert not [f for f in left if f.startswith("runs/finished/") and (f.endswith(".pt") or "/profile/" in f)]
    assert not [f for f in left if f.startswith("checkpoints/") and f.endswith(".pt")]
    assert {"runs/killed/checkpoints/last.pt", "runs/live/checkpoints/last.pt"} <= left
    assert "runs/finished/checkpoints/run.json" in left and "runs/finished/summary.json" in left


def test_include_unfinished_deletes_a_killed_runs_checkpoint_too(outputs, live, capsys):
    clean(capsys, outputs, "--include-unfinished", "--yes")
    left = files(outputs)
    assert "runs/killed/checkpoints/last.pt" not in left
    assert "runs/live/checkpoints/last.pt" in left  # a live run's, never


def test_older_than_keeps_what_is_newer_and_deletes_whole_old_run_folders(outputs, capsys):
    text = clean(capsys, outputs, "--older-than", "1d", "--yes")
    assert "total: 0 B deleted (0 items)" in text
    two_days_ago = time.time() - 2 * 86400
    for name in ("finished", "killed"):
        for path in [outputs / "runs" / name, *(outputs / "runs" / name).rglob("*")]:
            os.utime(path, (two_days_ago, two_days_ago))
    text = clean(capsys, outputs, "--older-than", "1d", "--yes")
    assert "run folder older than --older-than: runs/finished" in text
    assert not (outputs / "runs" / "finished").exists()
    assert (outputs / "runs" / "killed" / "checkpoints" / "last.pt").is_file()  # it can still resume
    assert (outputs / "runs" / "live" / "checkpoints" / "last.pt").is_file()  # new


@pytest.mark.parametrize(("args", "message"), [
    (["--outputs", "/nonexistent/outputs"], "kbk.clean: error: --outputs /nonexistent/outputs: no such folder. "
                                            "Fix: pass the outputs folder kbk wrote"),
    (["--older-than", "7x"], "kbk.clean: error: --older-than 7x: not an age. Fix: a number and a unit, one of s, "
                             "m, h, d, w (e.g. 30m, 12h, 7d)"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_deleted(outputs, args, message):
    before = files(outputs)
    args = args if args[0] == "--outputs" else ["--outputs", str(outputs), *args, "--yes"]
    proc = subprocess.run([sys.executable, "-m", "kbk.clean", *args], capture_output=True, text=True,
                          env=clean_env(), cwd=PROJECT_ROOT, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith(message) and proc.stderr.count("\n") == 1, proc.stderr
    assert files(outputs) == before
