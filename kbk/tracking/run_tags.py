"""How an MLflow run of kbk is named and tagged: the code version it ran (read from `.git`), where its outputs are,
the sweep and trial it belongs to, and the user's own tags and notes.

Plain Python (no MLflow; Hydra only for the typed overrides), so run names are cheap to compute anywhere.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: Characters of the typed overrides a run name shows before the config hash.
RUN_NAME_CHARS = 60


def _find_git_dir(start: Path) -> tuple[Path, Path] | None:
    """(work tree, git dir) of the repository containing `start`, or None. Follows `.git` files too."""
    for folder in (start, *start.parents):
        dot_git = folder / ".git"
        if dot_git.is_dir():
            return folder, dot_git
        if dot_git.is_file():
            text = dot_git.read_text(errors="replace").strip()
            if text.startswith("gitdir:"):
                git_dir = Path(text.split(":", 1)[1].strip())
                return folder, git_dir if git_dir.is_absolute() else (folder / git_dir).resolve()
            return None
    return None


def _read_ref(git_dir: Path, ref: str) -> str | None:
    common = git_dir
    if (git_dir / "commondir").is_file():  # a linked worktree keeps its branches in the main repository
        common = (git_dir / (git_dir / "commondir").read_text().strip()).resolve()
    for base in (git_dir, common):
        loose = base / ref
        if loose.is_file():
            return loose.read_text().strip() or None
    packed = common / "packed-refs"
    if packed.is_file():
        for line in packed.read_text(errors="replace").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == ref and not line.startswith(("#", "^")):
                return parts[0]
    return None


def git_info(repo_dir: str | Path, check_dirty: bool = True) -> dict[str, Any]:
    """`{"commit", "branch", "dirty"}` for the git repository containing `repo_dir`; each None when unknown.

    The commit and branch are read from the `.git` folder directly (no `git` needed); the dirty flag (tracked
    files changed, untracked files ignored) asks `git status` with a 10 s time-out and is None when git is
    missing, the folder is not a repository, or the call fails. Never raises.
    """
    info: dict[str, Any] = {"commit": None, "branch": None, "dirty": None}
    try:
        found = _find_git_dir(Path(repo_dir).resolve())
        if found is None:
            return info
        work_tree, git_dir = found
        head = (git_dir / "HEAD").read_text().strip()
        if head.startswith("ref:"):
            ref = head.split(":", 1)[1].strip()
            info["branch"] = ref.removeprefix("refs/heads/")
            info["commit"] = _read_ref(git_dir, ref)
        else:
            info["commit"] = head or None
    except OSError:
        return info
    if check_dirty and info["commit"] is not None:
        try:
            result = subprocess.run(
                ["git", "-C", str(work_tree), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=10,
                env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},  # a status must not take the index lock
            )
            if result.returncode == 0:
                info["dirty"] = bool(result.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    return info



def job_tags(*, run_hash: str, output_dir: Path, sweep: str | None, trial: str | None, labels: list[str],
             notes: str | None) -> dict[str, str]:
    """The tags every run of `python -m kbk.run` carries (docs/sweeps.md): `kbk.config_hash`, `kbk.role`,
    `kbk.output_dir`, the code version (`kbk.git_commit`, `kbk.git_dirty`, and MLflow's own
    `mlflow.source.git.commit`, shown in its UI; unknown values left out), the sweep (`kbk.sweep`) and trial
    (`optuna.trial_number`) of a sweep's job, and the user's tags and notes (`user_tags`)."""
    tags = {"kbk.config_hash": run_hash, "kbk.role": "trial" if sweep else "run",
            "kbk.output_dir": str(Path(output_dir).resolve())}
    info = git_info(Path(__file__).resolve().parent)
    if info["commit"]:
        tags["kbk.git_commit"] = tags["mlflow.source.git.commit"] = info["commit"]
    if info["dirty"] is not None:
        tags["kbk.git_dirty"] = str(info["dirty"]).lower()
    if sweep:
        tags["kbk.sweep"] = sweep
    if trial:
        tags["optuna.trial_number"] = trial
    return {**tags, **user_tags(labels, notes)}


def user_tags(labels: list[str], notes: str | None) -> dict[str, str]:
    """The MLflow tags of `tags=[...]` and `notes=...`: the words together as `kbk.tags=a,b` (one tag to filter on:
    `tags.kbk.tags LIKE '%baseline%'`), each `key=value` as its own tag, notes as the run's description."""
    words = [t for t in labels if "=" not in t]
    tags = dict(t.split("=", 1) for t in labels if "=" in t)
    if words:
        tags["kbk.tags"] = ",".join(words)
    if notes:
        tags["mlflow.note.content"] = notes
    return tags


def typed_overrides() -> list[str]:
    """The overrides the user typed (Hydra's `hydra.overrides.task`); [] outside a Hydra job."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def run_name(overrides: list[str], run_hash: str, unnamed: Iterable[str]) -> str:
    """`model=small,koopman.dim=512 #<hash8>`: what the user changed, cut at RUN_NAME_CHARS, then the config hash
    (two runs with the same name differ in a setting that is not in it; `#` so it never reads as part of the last
    value); `default #<hash8>` with no overrides. Overrides of the `unnamed` keys (and what is under them) are
    left out: they do not say what a run computes, and one of them (tracking.uri) may hold a secret."""
    unnamed = tuple(unnamed)

    def named(override: str) -> bool:
        key = override.lstrip("+~").split("=", 1)[0]
        return not any(key == k or key.startswith(f"{k}.") for k in unnamed)

    shown = [o.lstrip("+") for o in overrides if named(o)]
    return f"{','.join(shown)[:RUN_NAME_CHARS] or 'default'} #{run_hash[:8]}"
