"""The check Hydra runs before a job's folder exists (`hydra.callbacks` in conf/config.yaml): Hydra creates the
job's folder before any kbk code runs, and a folder it cannot create is a Hydra traceback."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf


class CheckOutputFolders(Callback):
    """The outputs folder and the run's (or sweep's) folder, checked without creating anything: the nearest
    existing ancestor must be a writable folder. A problem is one line and exit 2."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.sweep.dir")

    @staticmethod
    def _check(config: DictConfig, folder_key: str) -> None:
        from kbk.paths import outputs_dir

        outputs = outputs_dir(config.paths.outputs)
        for key, path, problem in (("paths.outputs", outputs, outputs_problem(outputs)),
                                   (folder_key, Path(str(OmegaConf.select(config, folder_key))), None)):
            problem = problem or folder_problem(path)
            if problem:
                print(f"kbk: error: {key}={path}: {problem}. Fix: choose a folder you can write to (paths.outputs=<dir>"
                      f" or KBK_OUTPUTS=<dir>)", file=sys.stderr, flush=True)
                sys.exit(2)


def outputs_problem(outputs: Path) -> str | None:
    """Why the outputs folder cannot be used (None if it can): it is created, and a file written and removed."""
    import tempfile

    try:
        outputs.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=outputs):
            pass
    except OSError as e:
        return f"cannot create or write to it ({e.strerror or e})"
    return None


def folder_problem(path: Path) -> str | None:
    """Why folder `path` could not be created (None if it could), found without creating anything."""
    existing = path.expanduser().absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None
