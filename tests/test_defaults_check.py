"""A preset whose defaults list YAML reads as a boolean (`override /koopman: off`) is one clear line naming the
file, the line and the fix, before Hydra composes anything (Hydra itself stops with a stack trace)."""

import subprocess
import sys
from pathlib import Path

from kbk.defaults_check import boolean_defaults, searchpath_folders
from kbk.paths import CONF_DIR, PROJECT_ROOT


def preset(folder: Path, body: str) -> Path:
    path = folder / "experiment" / "p.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# @package _global_\n" + body)
    return path


def test_a_bare_off_is_found_with_its_line_and_a_quoted_one_is_not(tmp_path):
    bad = preset(tmp_path / "bad", "defaults:\n  - override /model: tiny\n  - override /koopman: off  # oops\n")
    preset(tmp_path / "good", "defaults:\n  - override /koopman: \"off\"\n  - override /dmd: default\n")
    # `off` as a plain value (not in the defaults list) is YAML's boolean and meant as one: not flagged.
    preset(tmp_path / "value", "defaults:\n  - override /model: tiny\nkoopman:\n  enabled: off\n")
    assert boolean_defaults([tmp_path / "good", tmp_path / "value"]) == []
    (problem,) = boolean_defaults([tmp_path / "bad"])
    assert problem.startswith(f"{bad} line 4: `override /koopman: off` reads as the boolean false")
    assert problem.endswith('Fix: quote it: `override /koopman: "off"`')


def test_kbk_and_its_studies_have_no_such_line():
    folders = [CONF_DIR, *sorted((PROJECT_ROOT / "experiments").glob("*/conf"))]
    assert boolean_defaults(folders) == []


def test_searchpath_folders_come_from_the_command_line():
    argv = ["model=tiny", "hydra.searchpath=[file://experiments/a/conf,pkg://x, 'file:///abs/conf']"]
    assert searchpath_folders(argv) == [Path("experiments/a/conf"), Path("/abs/conf")]


def test_kbk_run_stops_with_one_line_and_writes_nothing(tmp_path):
    preset(tmp_path / "conf", "defaults:\n  - override /koopman: off\n")
    outputs = tmp_path / "outputs"
    proc = subprocess.run([sys.executable, "-m", "kbk.run", f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
                           "experiment=p", f"paths.outputs={outputs}", "tracking=none"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.startswith("kbk: error: ") and "line 3: `override /koopman: off`" in proc.stderr
    assert not outputs.exists()
