"""Bad input, as a user types it: `python -m kbk.run ... paths.outputs=<tmp>` in a subprocess.

Each case must exit non-zero with one clear message on stderr that names the key or value, the cause and the fix
(no traceback), create no MLflow run, and leave nothing half-written under the outputs folder.
"""

from __future__ import annotations

import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import TINY, TINY_MODEL, clean_env, kbk_command, metric_history, mlflow_runs

from kbk.paths import PROJECT_ROOT


def closed_port() -> int:
    """A loopback port nothing listens on (bound by the OS, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


#: name -> (overrides (TMP and PORT are filled in), phrases stderr must hold, kbk's own message or Hydra's).
CASES: dict[str, tuple[list[str], list[str], bool]] = {
    "koopman_dim_zero": ([*TINY, "koopman.dim=0"], ["koopman.dim=0", "integer > 0"], True),
    "dmd_buffer_negative": ([*TINY, "dmd.buffer_size=-5"], ["dmd.buffer_size=-5", "integer > 0"], True),
    "unknown_schedule": ([*TINY, "schedule=foo"],
                         ["Could not find 'schedule/foo'", "linear", "exponential", "step", "constant"], False),
    "text_without_path": ([*TINY_MODEL, "data=text"], ["data.path", ".txt"], True),
    "text_path_missing": ([*TINY_MODEL, "data=text", "data.path=/nonexistent/corpus.txt"],
                          ["data.path", "/nonexistent/corpus.txt", "exist"], True),
    "wikitext2_offline_no_cache": ([*TINY_MODEL, "data=wikitext2"],
                                   ["WikiText-2", "offline", "data.path=", "data=text", "data=synthetic"], True),
    "tracking_server_unreachable": ([*TINY, "tracking.uri=http://127.0.0.1:PORT"],
                                    ["http://127.0.0.1:PORT", "cannot be reached", "tracking=none"], True),
    "corrupt_checkpoint": ([*TINY, "trainer.resume=TMP/garbage.pt"],
                           ["TMP/garbage.pt", "corrupt", "trainer.resume"], True),
    "n_seq_larger_than_data": ([*TINY, "data.n_val_tokens=100", "model.n_seq=128"],
                               ["model.n_seq=128", "validation data (100 tokens)", "lower model.n_seq"], True),
    "unknown_key": ([*TINY, "trainer.bogus=1"], ["trainer.bogus", "Key 'bogus' not in 'TrainerConfig'"], False),
    "unknown_key_appended": ([*TINY, "+trainer.bogus=1"], ["trainer.bogus", "not a kbk setting", "epochs"], True),
    "wrong_type": ([*TINY, "trainer.epochs=abc"], ["trainer.epochs", "'abc'", "Integer"], False),
    "model_too_big": ([*TINY, "koopman.dim=100000000"], ["GiB", "koopman.dim (now 100000000)", "activations"], True),
    "unknown_device": ([*TINY, "trainer.device=tpu"], ["trainer.device='tpu'", "cuda:<index>"], True),
    "infinite_lr": ([*TINY, "trainer.lr=inf"], ["trainer.lr=inf", "finite"], True),
    "nan_weight": ([*TINY, "koopman.pred_weight=nan"], ["koopman.pred_weight=nan", "finite"], True),
    "unknown_metric": ([*TINY, "optimized_metric=val/nonexistent"], ["val/nonexistent", "val/ppl"], True),
    "koopman_metric_without_koopman": ([*TINY, "koopman=off", "optimized_metric=val/ppl_koopman"],
                                       ["val/ppl_koopman", "does not produce"], True),
    "run_dir_under_a_file": ([*TINY, "hydra.run.dir=TMP/garbage.pt/run"], ["hydra.run.dir", "is a file"], True),
}


def fill(text: str, tmp: Path, port: int) -> str:
    return text.replace("TMP", str(tmp)).replace("PORT", str(port))


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Every case run once, three at a time (each is a short-lived process that mostly imports)."""
    port = closed_port()

    def launch(name: str):
        tmp = tmp_path_factory.mktemp(name)
        (tmp / "garbage.pt").write_bytes(b"this is not a checkpoint\n" * 40)
        args, phrases, kbk_message = CASES[name]
        outputs = tmp / "outputs"
        env = clean_env({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp / "hf")})
        start = time.perf_counter()
        proc = subprocess.run(kbk_command([*(fill(a, tmp, port) for a in args), f"paths.outputs={outputs}"]),
                              capture_output=True, text=True, env=env, cwd=PROJECT_ROOT, timeout=300)
        return name, {"proc": proc, "outputs": outputs, "seconds": time.perf_counter() - start,
                      "phrases": [fill(p, tmp, port) for p in phrases], "kbk_message": kbk_message}

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(pool.map(launch, CASES))


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_fails_with_one_clear_message_and_writes_nothing(case, outcomes):
    outcome = outcomes[case]
    proc, outputs = outcome["proc"], outcome["outputs"]
    stderr = proc.stderr
    print(f"{case}: exit {proc.returncode} after {outcome['seconds']:.1f} s\n{stderr.strip()}")
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "Traceback" not in stderr
    missing = [p for p in outcome["phrases"] if p not in stderr]
    assert not missing, f"stderr lacks {missing}:\n{stderr}"
    if outcome["kbk_message"]:  # kbk's own check: exactly one line, its message
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("kbk: error: "), stderr
        assert proc.returncode == 2
    else:  # Hydra's compose error (the key, the value and the allowed choices or type); nothing of kbk ran
        assert "kbk: error" not in stderr and not proc.stdout.strip()
    # No MLflow run, and nothing half-written.
    assert mlflow_runs(outputs / "mlflow.db") == []
    assert not (outputs / "mlflow.db").exists()
    written = sorted(str(p.relative_to(outputs)) for p in outputs.rglob("*") if p.is_file()) if outputs.exists() \
        else []
    assert not written, f"left behind: {written}"
    run_folders = [p for p in (outputs / "runs").glob("*/*")] if (outputs / "runs").exists() else []
    assert not run_folders, f"run folders left behind: {run_folders}"


@pytest.mark.parametrize("outputs", ["/proc/kbk_outputs", "TMP/garbage.pt/outputs"])
def test_an_unusable_outputs_folder_is_one_line_before_any_run(outputs, tmp_path):
    (tmp_path / "garbage.pt").write_text("a file where a folder should be")
    outputs = fill(outputs, tmp_path, 0)
    proc = subprocess.run(kbk_command([*TINY, f"paths.outputs={outputs}"]), capture_output=True, text=True,
                          env=clean_env(), cwd=PROJECT_ROOT, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(f"kbk: error: paths.outputs={outputs}: ") and "Fix:" in lines[0]
    assert not Path(outputs).exists() and not proc.stdout.strip()  # no run started, nothing printed


def test_a_diverging_run_is_one_line_and_its_losses_are_stored(tmp_path, mlflow_store):
    """trainer.lr=1e4 diverges within a few steps, before the first log point: the run ends FAILED with the reason,
    the losses up to the divergence are in MLflow, and the console has one line, no traceback."""
    outputs = tmp_path / "outputs"
    db = mlflow_store(outputs)
    proc = subprocess.run(kbk_command([*TINY, "trainer.lr=1e4", f"paths.outputs={outputs}"]), capture_output=True,
                          text=True, env=clean_env(), cwd=PROJECT_ROOT, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("kbk: error: the language-model loss was non-finite") and "trainer.lr" in lines[0]
    (run,) = mlflow_runs(outputs / "mlflow.db")
    assert run.info.status == "FAILED" and "non-finite" in run.data.tags["kbk.end_reason"]
    assert metric_history(db, run.info.run_id, "train/loss_lm") and "train/loss_total" in run.data.metrics
