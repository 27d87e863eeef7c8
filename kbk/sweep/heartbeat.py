"""Which sweeper processes are alive: a heartbeat per process in the study, and the owner of every trial.

A killed sweep leaves its trials RUNNING forever (Optuna's journal storage has no heartbeat, and ask/tell gets
none from the RDB one). Every sweeper process therefore registers itself as a study user attribute
`kbk.worker.<id>` = {host, pid, process start time, last beat} and refreshes the beat every
`heartbeat_interval` seconds from a thread; each trial it asks gets the user attribute `kbk.worker` = <id>.
A RUNNING trial is stale when its owner is on this host and its process is gone (noticed at once), or when its
owner's last beat is older than `grace_period` (any host, e.g. a cluster login node).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from optuna import Study
    from optuna.trial import FrozenTrial

WORKER_PREFIX = "kbk.worker."
OWNER_ATTR = "kbk.worker"
#: A RUNNING trial with no owner yet (its process died between creating it and tagging it) is stale after this.
UNOWNED_GRACE_S = 60.0


def process_start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux); tells a pid from a later reuse of it."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def process_alive(pid: int, start_ticks: int | None = None) -> bool:
    """True while process `pid` (started at `start_ticks`, when known) runs on this host; zombies are dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        if fields[0] in (b"Z", b"X"):
            return False
        if start_ticks is not None and int(fields[19]) != start_ticks:
            return False  # the pid belongs to a newer process now
    except (OSError, IndexError, ValueError):
        pass  # no /proc: trust kill(0)
    return True


@dataclass
class WorkerInfo:
    host: str
    pid: int
    start_ticks: int | None
    beat: float

    @classmethod
    def from_attr(cls, value: Any) -> WorkerInfo | None:
        if not isinstance(value, Mapping):
            return None
        try:
            return cls(str(value["host"]), int(value["pid"]), value.get("start_ticks"), float(value["beat"]))
        except (KeyError, TypeError, ValueError):
            return None

    def as_attr(self) -> dict[str, Any]:
        return {"host": self.host, "pid": self.pid, "start_ticks": self.start_ticks, "beat": self.beat}


class Worker:
    """This sweeper process: its id, its registration in the study and its heartbeat thread."""

    def __init__(self, heartbeat_interval: float = 30.0, grace_period: float = 300.0) -> None:
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.id = f"{self.host}-{self.pid}-{uuid.uuid4().hex[:8]}"
        self.heartbeat_interval = max(0.05, float(heartbeat_interval))
        self.grace_period = max(self.heartbeat_interval * 2, float(grace_period))
        self._start_ticks = process_start_ticks(self.pid)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._study: Study | None = None

    def info(self) -> WorkerInfo:
        return WorkerInfo(self.host, self.pid, self._start_ticks, time.time())

    def beat(self) -> None:
        if self._study is not None:
            self._study.set_user_attr(WORKER_PREFIX + self.id, self.info().as_attr())

    def start(self, study: Study) -> None:
        self._study = study
        self.beat()
        self._thread = threading.Thread(target=self._run, name="kbk-sweep-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.heartbeat_interval):
            try:
                self.beat()
            except Exception:  # noqa: BLE001 (a storage hiccup must not kill the heartbeat; the next one retries)
                pass

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def stale_reason(self, trial: FrozenTrial, workers: Mapping[str, WorkerInfo], now: float) -> str | None:
        """Why a RUNNING trial is abandoned, or None while its sweeper process may still report it."""
        owner = trial.user_attrs.get(OWNER_ATTR)
        if owner == self.id:
            return None
        if owner is None:
            started = trial.datetime_start.timestamp() if trial.datetime_start else now
            if now - started > UNOWNED_GRACE_S:
                return f"its sweeper process never claimed it ({now - started:.0f} s ago)"
            return None
        info = workers.get(owner)
        if info is None:
            return f"its sweeper process {owner} is unknown to the study"
        return self.stale_reason_of(owner, info, now)

    def stale_reason_of(self, worker_id: str, info: WorkerInfo, now: float) -> str | None:
        """Why sweeper process `worker_id` counts as gone, or None while it may still be working."""
        if info.host == self.host and not process_alive(info.pid, info.start_ticks):
            return f"its sweeper process {worker_id} (pid {info.pid}) is gone"
        if now - info.beat > self.grace_period:
            return f"its sweeper process {worker_id} has not reported for {now - info.beat:.0f} s"
        return None


def registered_workers(study: Study) -> dict[str, WorkerInfo]:
    out: dict[str, WorkerInfo] = {}
    for key, value in study.user_attrs.items():
        if key.startswith(WORKER_PREFIX):
            info = WorkerInfo.from_attr(value)
            if info is not None:
                out[key[len(WORKER_PREFIX) :]] = info
    return out


def creator_gone(creator: Any, host: str) -> bool:
    """True when the process recorded as a study's creator (`WorkerInfo.as_attr`) ran on this host and has ended
    (a study made before creators were recorded has none: its creator is waited for)."""
    info = WorkerInfo.from_attr(creator)
    return info is not None and info.host == host and not process_alive(info.pid, info.start_ticks)
