"""One GPU per job of a parallel sweep (`hydra/launcher=joblib_gpus`, conf/hydra/launcher/joblib_gpus.yaml): a Hydra
callback that, before each job's task, takes one device of a list and sets `CUDA_VISIBLE_DEVICES` to it, so the
job's `trainer.device=auto` sees exactly that GPU (as `cuda:0`).

Why not "job number modulo the number of devices": joblib's workers are reused processes, and a worker that has
initialised CUDA keeps the device it started on whatever the variable says later; nor do jobs end in order, so
jobs 0 and 2 may run at once on device 0 while device 1 idles. Instead each device is a lock file in the sweep's
folder (`<sweep dir>/.devices/<device>.lock`, an `flock` held for the job's life, dropped by the OS if the worker
dies): a job takes a free device, preferring the one its process used before, and waits while none is free, so at
most one job runs per device. With `hydra.launcher.n_jobs` equal to the number of devices a job never waits.

The devices: the callback's `devices` (a list, or `"0,1"`; `KBK_GPUS=0,1` in the preset), else the launching
environment's `CUDA_VISIBLE_DEVICES`, else every GPU `nvidia-smi --list-gpus` names; none found: the callback does
nothing (CPU jobs).
"""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig

LOCK_FOLDER = ".devices"
WAIT_S = 0.5  # between looks for a free device, when every one is taken
CALLBACK_KEY = "hydra.callbacks.one_device_per_job.devices"

log = logging.getLogger("kbk")

# This process's device: CUDA cannot move to another once initialised, so its next job asks for the same one.
_last_device: str | None = None


def listed_devices(devices: Any) -> list[str]:
    """`devices` as a list of device ids: a list, a comma-separated string, a single id, or None (found here)."""
    if devices is None:
        return visible_devices()
    if isinstance(devices, (list, tuple, ListConfig)):
        return [str(d).strip() for d in devices]
    return [d.strip() for d in str(devices).split(",")]


def visible_devices() -> list[str]:
    """The GPUs this process may use: `CUDA_VISIBLE_DEVICES` if set, else those `nvidia-smi` lists (no CUDA
    initialisation, which would pin the process to its devices)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip()]
    try:
        out = subprocess.run(["nvidia-smi", "--list-gpus"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(ln for ln in out.splitlines() if ln.startswith("GPU "))]


def devices_problem(devices: list[str]) -> str | None:
    if any(not d for d in devices):
        return "an empty device id"
    if len(set(devices)) != len(devices):
        return "a device listed twice (each device takes one job at a time)"
    return None


class DeviceLock:
    """One device of `devices` taken by this process through its lock file in `folder`, until `release()`."""

    def __init__(self, folder: Path, devices: list[str], prefer: str | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        order = ([prefer] if prefer in devices else []) + [d for d in devices if d != prefer]
        while True:
            for device in order:
                fd = os.open(folder / f"{device}.lock", os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                self.device, self._fd = device, fd
                return
            time.sleep(WAIT_S)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops its flock
            self._fd = None


class OneDevicePerJob(Callback):
    """Sets `CUDA_VISIBLE_DEVICES` to one free device of `devices` for each job (see the module docstring)."""

    def __init__(self, devices: Any = None) -> None:
        self.devices = listed_devices(devices)
        self._lock: DeviceLock | None = None
        self._previous: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        problem = devices_problem(self.devices)
        if problem:
            print(f"kbk: error: {CALLBACK_KEY}={','.join(self.devices)}: {problem}. Fix: list each GPU once, e.g. "
                  f"KBK_GPUS=0,1 (or leave it unset: every GPU nvidia-smi lists)", file=sys.stderr, flush=True)
            sys.exit(2)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _last_device
        if not self.devices:
            return  # no GPU: the jobs train on the CPU
        folder = Path(str(config.hydra.sweep.dir)) / LOCK_FOLDER
        self._lock = DeviceLock(folder, self.devices, prefer=_last_device)
        device = self._lock.device
        torch = sys.modules.get("torch")
        if _last_device not in (None, device) and torch is not None and torch.cuda.is_initialized():
            log.warning("job %s: device %s assigned, but this worker's CUDA is already on device %s and cannot "
                        "move: the job shares that GPU", config.hydra.job.num, device, _last_device)
        self._previous = os.environ.get("CUDA_VISIBLE_DEVICES")
        os.environ["CUDA_VISIBLE_DEVICES"] = device
        _last_device = device
        log.info("job %s: CUDA_VISIBLE_DEVICES=%s", config.hydra.job.num, device)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if self._lock is None:
            return
        if self._previous is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = self._previous
        self._lock.release()
        self._lock = None
