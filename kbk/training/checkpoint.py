"""Atomic checkpoints: a killed process leaves either the previous checkpoint or the new one, never half of one."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kbk.errors import CheckpointError
from kbk.files import write_atomic

FORMAT_VERSION = 1


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write `state` to `path` atomically, fsynced: a power cut too leaves the previous checkpoint or this one."""
    return write_atomic(path, lambda f: torch.save({"format_version": FORMAT_VERSION, **state}, f), fsync=True)


class CheckpointFolderLock:
    """An exclusive lock on a config's checkpoint folder for the life of its run: two processes training the same
    config would overwrite each other's checkpoints. The lock is on the folder itself (no lock file is left
    behind), and the OS drops it when its process dies, even by SIGKILL: a free lock says that no run of this
    config is alive."""

    def __init__(self, folder: Path) -> None:
        import fcntl
        import json

        folder.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(folder, os.O_RDONLY)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.release()
            try:
                holder = f" (MLflow run {json.loads((folder / 'run.json').read_text())['run_id']})"
            except (OSError, ValueError, KeyError, TypeError):
                holder = ""
            raise CheckpointError(
                f"another kbk process is training this same config now{holder}, with its checkpoints in {folder}: "
                f"wait for it to finish, or change a setting (e.g. seed) to train another config"
            ) from None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the lock
            self._fd = None

    def __enter__(self) -> CheckpointFolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def remove_partial_checkpoints(folder: Path) -> list[Path]:
    """Delete the temporary files of checkpoints whose writer was killed mid-write (call under the folder's lock)."""
    partial = sorted(folder.glob(".*.tmp"))
    for path in partial:
        path.unlink(missing_ok=True)
    return partial


class CheckpointRetention:
    """What a run's checkpoint folder keeps once the run is over (`trainer.keep_checkpoint`): `last` all of it,
    `best` best.pt only, `none_after_finish` no checkpoint. The run is over when `finished()` is called (its MLflow
    run ended FINISHED with everything logged, `log_checkpoint`'s copy too) or when Optuna pruned its trial (a
    pruned trial is never resumed). A run stopped any other way keeps its checkpoints, to resume from."""

    def __init__(self, folder: Path, keep: str) -> None:
        self.folder, self.keep = folder, keep

    def finished(self, how: str = "finished") -> list[Path]:
        """Record the run's end beside its checkpoints, then delete what `keep` does not keep; returns those."""
        from kbk.tracking.resume import mark_ended

        mark_ended(self.folder, how)
        dropped = {"last": [], "best": [self.folder / "last.pt"], "none_after_finish": sorted(self.folder.glob("*.pt"))}
        gone = [path for path in dropped[self.keep] if path.is_file()]
        for path in gone:
            path.unlink()
        return gone

    def __enter__(self) -> CheckpointRetention:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is not None and exc_type.__name__ == "TrialPruned":  # optuna's, without importing optuna
            self.finished("pruned")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`; a missing or unreadable file is a `CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {path}: pass trainer.resume=<path to a .pt file kbk wrote>, or trainer.resume=false "
            f"to start fresh"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a kbk checkpoint ({type(exc).__name__}: {exc}); delete it or "
            f"point trainer.resume at another checkpoint, or set trainer.resume=false to start fresh"
        ) from exc
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} was not written by this version of kbk (format_version="
            f"{state.get('format_version') if isinstance(state, dict) else None}, expected {FORMAT_VERSION}); "
            f"set trainer.resume=false to start fresh"
        )
    return state


def rng_state() -> dict[str, Any]:
    """Every random stream a training step may draw from."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    # .cpu(): a checkpoint loaded with map_location="cuda" has its RNG states on the GPU, and generators take their
    # state as a CPU ByteTensor only.
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA). Call at the start of every run and every sweep job."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
