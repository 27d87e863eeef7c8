"""One GPU per job (`hydra/launcher=joblib_gpus`, kbk/device_assignment.py), on a CPU machine with a fake device
list: a real Hydra multirun on the real joblib launcher, whose jobs record the CUDA_VISIBLE_DEVICES they saw."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from conftest import clean_env, compose_kbk

from kbk.device_assignment import DeviceLock, listed_devices
from kbk.paths import CONF_DIR

#: A Hydra app on kbk's config whose task only records what its job saw, and overlaps its neighbours.
APP = textwrap.dedent(f"""
    import json, os, time
    import hydra
    from hydra.core.hydra_config import HydraConfig
    import kbk.run  # registers kbk's schema and resolvers

    @hydra.main(version_base="1.3", config_path={str(CONF_DIR)!r}, config_name="config")
    def task(cfg):
        start = time.time()
        time.sleep(1.0)
        record = {{"job": HydraConfig.get().job.num, "device": os.environ.get("CUDA_VISIBLE_DEVICES"),
                  "pid": os.getpid(), "start": start, "end": time.time()}}
        with open(os.path.join(HydraConfig.get().runtime.output_dir, "seen.json"), "w") as f:
            json.dump(record, f)

    task()
""")


def run_app(tmp_path, gpus: str, jobs: int = 4, n_jobs: int = 2) -> subprocess.CompletedProcess:
    app = tmp_path / "app.py"
    app.write_text(APP)
    seeds = ",".join(str(i) for i in range(jobs))
    return subprocess.run(
        [sys.executable, str(app), "-m", f"seed={seeds}", "hydra/launcher=joblib_gpus",
         f"hydra.launcher.n_jobs={n_jobs}", "tracking=none", f"paths.outputs={tmp_path / 'outputs'}"],
        capture_output=True, text=True, timeout=300, env=clean_env({"KBK_GPUS": gpus}))


@pytest.mark.timeout(300)
def test_each_parallel_job_sees_one_device_and_no_two_running_jobs_share_one(tmp_path):
    result = run_app(tmp_path, "7,9")
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "outputs").glob("multirun/*/*/*/seen.json"))]
    assert sorted(r["job"] for r in records) == [0, 1, 2, 3]
    assert all(r["device"] in ("7", "9") for r in records), records
    for a in records:
        for b in records:
            overlap = a["start"] < b["end"] and b["start"] < a["end"]
            if a is not b and overlap:
                assert a["device"] != b["device"], (a, b)
    assert {r["device"] for r in records} == {"7", "9"}  # both devices used
    for r in records:  # a worker keeps its device: CUDA cannot move once initialised
        assert len({s["device"] for s in records if s["pid"] == r["pid"]}) == 1, records


def test_a_device_listed_twice_is_one_line_and_exit_2(tmp_path):
    result = run_app(tmp_path, "0,0", jobs=2)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "kbk: error: hydra.callbacks.one_device_per_job.devices=0,0: a device listed twice (each device takes one "
        "job at a time). Fix: list each GPU once, e.g. KBK_GPUS=0,1 (or leave it unset: every GPU nvidia-smi lists)"]
    assert not list((tmp_path / "outputs").glob("multirun/*/*/*/seen.json"))


def test_a_job_waits_for_a_free_device_and_prefers_its_own(tmp_path):
    first = DeviceLock(tmp_path, ["a", "b"])
    second = DeviceLock(tmp_path, ["a", "b"])
    assert (first.device, second.device) == ("a", "b")
    got: list[str] = []
    waiter = threading.Thread(target=lambda: got.append(DeviceLock(tmp_path, ["a", "b"], prefer="b").device))
    waiter.start()
    time.sleep(0.3)
    assert not got  # both taken: it waits
    first.release()
    waiter.join(timeout=10)
    assert got == ["a"]
    second.release()
    assert DeviceLock(tmp_path, ["a", "b"], prefer="b").device == "b"


def test_the_device_list_comes_from_the_setting_or_the_environment(monkeypatch):
    assert listed_devices("0, 2") == ["0", "2"] and listed_devices([1, 3]) == ["1", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    assert listed_devices(None) == ["4", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert listed_devices(None) == []  # no GPU: the callback leaves jobs alone


def test_the_preset_is_joblib_with_the_callback():
    hydra = compose_kbk(["hydra/launcher=joblib_gpus"], hydra=True).hydra
    assert hydra.launcher._target_.endswith("JoblibLauncher")
    assert hydra.callbacks.one_device_per_job._target_ == "kbk.device_assignment.OneDevicePerJob"
