"""SIGKILL before and during a run's first checkpoint, then the same command with trainer.resume=true: does any
MLflow run stay RUNNING, is a partial checkpoint left, is the resume's finding said?

    python experiments/robustness/sigkill_before_checkpoint.py  # writes sigkill_before_checkpoint_results.md

A run of 2000 steps whose one evaluation (and checkpoint) is at the end is killed at 10 offsets after its MLflow run
exists (`ready to train`), from 0 s to the checkpoint's own write; each time the resumed command must end the
killed run KILLED and finish a new one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUN = ["model.n_seq=16", "model.d_model=16", "model.n_layers=1", "koopman.dim=8", "koopman.sample_tokens=32",
       "trainer.batch_size=4", "data.n_train_tokens=4000", "data.n_val_tokens=1000", "data.vocab_size=32",
       "trainer.epochs=100", "trainer.max_steps=2000", "trainer.eval_every=100000"]
OFFSETS_S = [0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 1.0]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def one_try(offset_s: float, outputs: Path) -> dict:
    from mlflow import MlflowClient

    command = [sys.executable, "-m", "kbk.run", *RUN, f"paths.outputs={outputs}"]
    proc = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if "ready to train" in line:
            break
    time.sleep(offset_s)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_after_checkpoint = any(outputs.glob("runs/*/*/checkpoints/last.pt"))  # in the run's folder
    resumed = subprocess.run([*command, "trainer.resume=true"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                             timeout=600)
    client = MlflowClient(f"sqlite:///{outputs / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("kbk").experiment_id])
    return {"offset_s": offset_s, "checkpoint_before_resume": killed_after_checkpoint,
            "resume_exit": resumed.returncode, "statuses": sorted(r.info.status for r in runs),
            "partial_left": any(outputs.glob("runs/*/*/checkpoints/.*.tmp")),
            "said": "no checkpoint of this config" in resumed.stdout or "resuming" in resumed.stdout}


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, offset in enumerate(OFFSETS_S):
            rows.append(one_try(offset, Path(tmp) / f"try{i}"))
            print(rows[-1], flush=True)
    running = sum(r["statuses"].count("RUNNING") for r in rows)
    lines = ["# SIGKILL before and during the first checkpoint, then resume", "",
             f"Command: `python {Path(__file__).relative_to(ROOT)}`", "",
             f"{len(rows)} kills; runs left RUNNING after the resumed command: {running}; partial checkpoints left: "
             f"{sum(r['partial_left'] for r in rows)}.", "",
             "| kill offset after `ready to train` (s) | checkpoint existed | resume exit | run statuses | said |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['offset_s']} | {r['checkpoint_before_resume']} | {r['resume_exit']} | {', '.join(r['statuses'])} "
              f"| {r['said']} |" for r in rows]
    out = Path(__file__).with_name("sigkill_before_checkpoint_results.md")
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
