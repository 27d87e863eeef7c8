"""Writing files so that a reader (another sweeper process, a resumed run) never sees half of one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def write_atomic(path: str | Path, content: str | bytes | Callable[[IO[bytes]], None], fsync: bool = False) -> Path:
    """Write `content` (text, bytes, or a function that writes into a binary file) to `path` through a temporary
    file in the same folder and an atomic rename: a killed process leaves the old file or the new one, and two
    processes writing the same path never interleave. `fsync` also survives a power cut (checkpoints)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
