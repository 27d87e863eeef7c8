"""Where kbk writes: one outputs folder per project, whatever the current folder is."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# An editable install or a checkout: the folder that holds conf/ and kbk/ is the project root.
PROJECT_ROOT = PACKAGE_DIR.parent if (PACKAGE_DIR.parent / "conf").is_dir() else Path.cwd()
CONF_DIR = PROJECT_ROOT / "conf"


def outputs_dir(path: str | os.PathLike | None = None) -> Path:
    """The outputs folder as an absolute path: relative paths count from the project root, not the cwd."""
    p = Path(path if path else os.environ.get("KBK_OUTPUTS", "outputs")).expanduser()
    return p if p.is_absolute() else (PROJECT_ROOT / p)


def register_resolvers() -> None:
    """`${kbk_outputs:<path>}` in YAML gives the absolute outputs folder (used by hydra.run.dir / sweep.dir)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("kbk_outputs"):
        OmegaConf.register_new_resolver("kbk_outputs", lambda p=None: str(outputs_dir(p)))
