"""python -m kbk.clean: what takes space under the outputs folder, and deleting what no run needs any more.

    python -m kbk.clean                                # a dry run: what would go, what stays and why, the totals
    python -m kbk.clean --yes                          # delete it
    python -m kbk.clean --older-than 7d --yes          # only what is older than 7 days, and whole run folders too
    python -m kbk.clean --include-unfinished --yes     # also checkpoints of killed runs that could still resume
    python -m kbk.clean --outputs /data/kbk_outputs    # another outputs folder (default: paths.outputs' default)

Candidates: the checkpoints of finished (or pruned) runs, profile traces (`<run folder>/profile/`) and, with
`--older-than`, whole run folders. Never deleted: anything of a config a live run holds (its checkpoint index's
lock is taken), the checkpoints of an unfinished run (killed: they can resume) unless `--include-unfinished`, and a
run folder whose config a kept checkpoint needs. The MLflow store, the Optuna journals, the tokenised-data cache and
the sweeps' result files are not touched.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kbk.errors import CheckpointError, KbkError, command_line

PROG = "kbk.clean"
#: Folders of the outputs folder that hold stores, not runs: never walked, never deleted.
STORES = ("checkpoints", "mlartifacts", "mlruns", "optuna", "cache", "corpora")
#: Seconds per unit of `--older-than`.
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass
class Item:
    """One thing that takes space: a run's checkpoints (`files` in `path`), a profile trace or a whole run folder."""

    path: Path
    kind: str  # "checkpoints" | "profile trace" | "run folder"
    why: str  # what it belongs to, and why it goes or stays
    delete: bool
    index: Path | None = None  # the config's checkpoint index, whose lock guards it
    files: list[Path] = field(default_factory=list)  # checkpoints: only these files go (run.json stays)
    size: int = 0

    def __post_init__(self) -> None:
        self.size = sum(size_of(p) for p in self.files) if self.files else size_of(self.path)


def main_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m {PROG}", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--outputs", help="the outputs folder (default: $KBK_OUTPUTS, else outputs/ in the project)")
    p.add_argument("--older-than", metavar="AGE", help="only what was last written more than AGE ago (30m, 12h, "
                                                       "7d, 2w); whole run folders that old go too")
    p.add_argument("--include-unfinished", action="store_true",
                   help="also the checkpoints of killed runs, which could still resume")
    p.add_argument("--yes", action="store_true", help="delete (default: only list what would be deleted)")
    return p


@command_line(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    from kbk.paths import outputs_dir

    args = main_parser().parse_args(argv)
    outputs = outputs_dir(args.outputs)
    if not outputs.is_dir():
        raise KbkError(f"--outputs {args.outputs or outputs}: no such folder. Fix: pass the outputs folder kbk "
                       f"wrote (paths.outputs; default outputs/ in the project, or $KBK_OUTPUTS)")
    max_age = seconds(args.older_than) if args.older_than is not None else None
    items = survey(outputs, max_age, args.include_unfinished)
    doomed = [item for item in items if item.delete]
    if args.yes:
        doomed = [item for item in doomed if remove(item)]
    report(outputs, items, doomed, done=args.yes)
    if max_age is None:  # run folders are candidates only by age: say what they hold in all
        folders = list(run_folders(outputs))
        print(f"run folders: {len(folders)}, {human(sum(size_of(f) for f in folders))} in all, checkpoints and "
              f"traces included (--older-than AGE deletes those last written longer ago)")
    return 0


def seconds(age: str) -> float:
    """`--older-than`'s value in seconds: a number and a unit (s, m, h, d, w)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", age)
    if match is None:
        raise KbkError(f"--older-than {age}: not an age. Fix: a number and a unit, one of s, m, h, d, w "
                       f"(e.g. 30m, 12h, 7d)")
    return float(match.group(1)) * UNITS[match.group(2)]


# ------------------------------------------------------------------------------------------------ what is there


def survey(outputs: Path, max_age: float | None, include_unfinished: bool) -> list[Item]:
    """Everything that takes space under `outputs`, each marked to delete or keep with the reason."""
    from kbk.tracking.resume import read_run_record

    indexes = sorted(p for p in (outputs / "checkpoints").glob("*") if p.is_dir())
    live = {index for index in indexes if in_use(index)}
    busy = {Path(read_run_record(i).get("output_dir", i)).resolve() for i in live}  # the live runs' folders
    now = time.time()

    def too_young(path: Path) -> bool:
        return max_age is not None and now - newest_write(path) < max_age

    items = [checkpoints_item(index, index, live, include_unfinished, too_young) for index in indexes]
    folders = sorted(run_folders(outputs))
    for folder in folders:
        record = read_run_record(folder / "checkpoints")
        index = outputs / "checkpoints" / record["config_hash"] if "config_hash" in record else None
        items.append(checkpoints_item(folder / "checkpoints", index, live, include_unfinished, too_young))
    items = [item for item in items if item is not None]
    # A run folder that a kept checkpoint's record names holds the config it needs (kbk.evaluate reads it).
    needed = busy | {Path(read_run_record(i.path).get("output_dir", i.path)).resolve() for i in items if not i.delete}
    for folder in folders:
        inside = [i for i in items if folder in i.path.parents]
        if max_age is not None and not too_young(folder):
            if folder.resolve() in needed or any(not i.delete for i in inside):
                continue
            items = [i for i in items if i not in inside]  # the whole folder goes: its parts are not listed
            index = inside[0].index if inside else None
            items.append(Item(folder, "run folder", "older than --older-than", True, index))
        elif (folder / "profile").is_dir():
            items.append(profile_item(folder / "profile", folder.resolve() in busy, too_young))
    return sorted(items, key=lambda i: (not i.delete, -i.size, str(i.path)))


def checkpoints_item(folder: Path, index: Path | None, live: set[Path], include_unfinished: bool,
                     too_young) -> Item | None:
    """The checkpoints in `folder` (a run's `checkpoints/`, or an index folder of an older store), or None."""
    from kbk.tracking.resume import read_run_record

    files = sorted([*folder.glob("*.pt"), *folder.glob(".*.tmp")])
    if not files:
        return None
    ended = read_run_record(folder).get("ended") or legacy_end(folder)
    if index in live:
        return Item(folder, "checkpoints", "of a live run", False, index, files)
    if too_young(folder):
        return Item(folder, "checkpoints", f"of a {ended or 'unfinished'} run, newer than --older-than", False,
                    index, files)
    if ended:
        return Item(folder, "checkpoints", f"of a {ended} run", True, index, files)
    if include_unfinished:
        return Item(folder, "checkpoints", "of an unfinished run (--include-unfinished)", True, index, files)
    return Item(folder, "checkpoints", "of an unfinished run: it can resume (--include-unfinished deletes it)",
                False, index, files)


def profile_item(profile: Path, live: bool, too_young) -> Item:
    if live:
        return Item(profile, "profile trace", "of a live run", False)
    if too_young(profile):
        return Item(profile, "profile trace", "newer than --older-than", False)
    return Item(profile, "profile trace", "(debug=profile)", True)


def legacy_end(folder: Path) -> str | None:
    """`finished` for a checkpoint of an older store (no end in its run.json) whose training had ended."""
    if folder.name == "checkpoints" or not (folder / "last.pt").is_file():
        return None  # a run folder's checkpoints: run.json says when it ended
    import torch

    try:
        state = torch.load(folder / "last.pt", map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # noqa: BLE001 (unreadable: counted unfinished, so kept by default)
        return None
    return "finished" if isinstance(state, dict) and state.get("summary") is not None else None


def in_use(index: Path) -> bool:
    """Whether a live run holds this config's checkpoint lock (taken and dropped at once if it is free)."""
    from kbk.training.checkpoint import CheckpointFolderLock

    try:
        CheckpointFolderLock(index).release()
    except CheckpointError:
        return True
    return False


def run_folders(outputs: Path) -> Iterator[Path]:
    """Hydra's run and trial folders (those with a `.hydra/`) under `outputs`, outside its stores."""
    for top in outputs.iterdir():
        if top.name in STORES or not top.is_dir() or top.is_symlink():
            continue
        for root, dirs, _ in os.walk(top):
            if ".hydra" in dirs:
                dirs.clear()  # a run folder holds no other
                yield Path(root)


def size_of(path: Path) -> int:
    if not path.is_dir() or path.is_symlink():
        return path.lstat().st_size if path.exists() else 0
    return sum((Path(root) / name).lstat().st_size for root, _, names in os.walk(path) for name in names)


def newest_write(path: Path) -> float:
    """When anything in `path` was last written."""
    times = [path.lstat().st_mtime]
    if path.is_dir():
        times += [(Path(root) / name).lstat().st_mtime for root, _, names in os.walk(path) for name in names]
    return max(times)


# ------------------------------------------------------------------------------------------------ deleting


def remove(item: Item) -> bool:
    """Delete `item` under its config's lock (so that no run of it starts meanwhile); False if a run holds it."""
    from kbk.training.checkpoint import CheckpointFolderLock

    try:
        guard = CheckpointFolderLock(item.index) if item.index is not None else contextlib.nullcontext()
    except CheckpointError:
        item.why, item.delete = "of a run that started meanwhile", False
        return False
    with guard:
        for path in item.files:
            path.unlink(missing_ok=True)
        if not item.files:
            shutil.rmtree(item.path, ignore_errors=True)
    return True


def report(outputs: Path, items: list[Item], doomed: list[Item], done: bool) -> None:
    """The items to delete (or deleted), then those kept with the reason, then the totals."""
    kept = [item for item in items if not item.delete]
    verb = "deleted" if done else "would be deleted"
    print(f"{outputs}: {'deleted' if done else 'would delete (a dry run; --yes deletes)'}:")
    for item in doomed:
        print(line(item, outputs))
    if kept:
        print("kept:")
        for item in kept:
            print(line(item, outputs))
    print(f"total: {human(sum(i.size for i in doomed))} {verb} ({count(doomed)}); "
          f"{human(sum(i.size for i in kept))} kept ({count(kept)})")


def count(items: list[Item]) -> str:
    return f"{len(items)} item" if len(items) == 1 else f"{len(items)} items"


def line(item: Item, outputs: Path) -> str:
    where = item.path.relative_to(outputs) if outputs in item.path.parents else item.path
    names = f" ({', '.join(p.name for p in item.files)})" if item.files else ""
    return f"  {human(item.size):>9}  {item.kind} {item.why}: {where}{names}"


def human(size: float) -> str:
    if size < 1000:
        return f"{size:.0f} B"
    for unit in ("kB", "MB", "GB"):
        size /= 1000
        if size < 1000 or unit == "GB":
            break
    return f"{size:.1f} {unit}"


if __name__ == "__main__":
    raise SystemExit(main())
