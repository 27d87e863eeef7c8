"""What a run records about itself besides metrics: the flattened config, its hash, and the code version.

Plain Python (no MLflow, no OmegaConf import unless handed a DictConfig), so the sweeper and the trainer can
use it without paying for MLflow's import.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

#: Key patterns `without_paths` drops by default: Hydra's own settings, and keys that hold a location rather
#: than a setting. Matched (fnmatch, case-sensitive) against each key's own name and against its dotted path;
#: a match drops the key and everything under it.
PATH_LIKE_KEYS: tuple[str, ...] = ("hydra", "*dir", "*dirs", "*path", "*paths", "uri", "*_uri")


def _to_plain(obj: Any) -> Any:
    """An OmegaConf container as plain dicts and lists (interpolations resolved); anything else unchanged."""
    if type(obj).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        if OmegaConf.is_config(obj):
            return OmegaConf.to_container(obj, resolve=True, throw_on_missing=False)
    return obj


def _json(value: Any) -> str:
    return json.dumps(_to_plain(value), sort_keys=True, default=str, ensure_ascii=False)


def flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """`{"koopman": {"dim": 256}}` → `{"koopman.dim": "256"}`, with every value a string.

    Nested mappings become dotted keys; lists and tuples become JSON strings (`"[64, 128]"`); an empty mapping
    is kept as `"{}"` so that it stays visible; other values go through `str` (so `True`, `None`, `0.001`),
    which is also what MLflow itself does to a param value. A DictConfig is resolved first.
    """
    cfg = _to_plain(cfg)
    out: dict[str, str] = {}
    for key, value in cfg.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        value = _to_plain(value)
        if isinstance(value, Mapping):
            if value:
                out.update(flatten(value, name))
            else:
                out[name] = "{}"
        elif isinstance(value, list | tuple):
            out[name] = _json(list(value))
        else:
            out[name] = str(value)
    return out


def without_paths(cfg: Mapping[str, Any], drop: Iterable[str] = PATH_LIKE_KEYS) -> dict[str, Any]:
    """A copy of `cfg` without the keys that match a pattern in `drop` (see `PATH_LIKE_KEYS`), at any depth.

    Two runs of the same configuration launched from different folders (or Hydra job dirs) then hash the same.
    """
    patterns = tuple(drop)

    def keep(name: str, dotted: str) -> bool:
        return not any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(dotted, p) for p in patterns)

    def walk(node: Any, prefix: str) -> Any:
        node = _to_plain(node)
        if isinstance(node, Mapping):
            result = {}
            for key, value in node.items():
                dotted = f"{prefix}.{key}" if prefix else str(key)
                if keep(str(key), dotted):
                    result[key] = walk(value, dotted)
            return result
        if isinstance(node, list | tuple):
            return [walk(item, prefix) for item in node]
        return node

    return walk(cfg, "")


def config_hash(cfg: Mapping[str, Any]) -> str:
    """A stable 16-hex-digit hash of `cfg` (pass it through `without_paths` first).

    Canonical JSON (sorted keys, no whitespace, tuples as lists, unknown types through `str`) hashed with
    SHA-256: the same settings give the same hash in every process and on every machine, whatever the key
    order. Note that `1` and `1.0` are different settings here.
    """
    canonical = json.dumps(
        _to_plain(cfg), sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


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


def run_tags(
    cfg: Mapping[str, Any] | None = None,
    repo_dir: str | Path | None = None,
    output_dir: str | Path | None = None,
    drop: Iterable[str] = PATH_LIKE_KEYS,
) -> dict[str, str]:
    """The tags every run carries (docs/sweeps.md): `kbk.config_hash`, `kbk.git_commit`, `kbk.git_dirty`,
    `kbk.output_dir`, plus MLflow's own `mlflow.source.git.commit` (shown in its UI). Unknown values are
    left out.
    """
    tags: dict[str, str] = {}
    if cfg is not None:
        tags["kbk.config_hash"] = config_hash(without_paths(cfg, drop))
    if repo_dir is not None:
        info = git_info(repo_dir)
        if info["commit"]:
            tags["kbk.git_commit"] = tags["mlflow.source.git.commit"] = info["commit"]
        if info["dirty"] is not None:
            tags["kbk.git_dirty"] = str(info["dirty"]).lower()
    if output_dir is not None:
        tags["kbk.output_dir"] = str(Path(output_dir).resolve())
    return tags
