"""SIGINT in the last second of a run (after its last training step: final evaluation, checkpoint, artifact
uploads, the end of the MLflow run), at 12 offsets from 0 to 1.1 s: how each try ends.

    python experiments/robustness/sigint_after_training.py      # writes sigint_after_training_results.md

Wanted for every try: exit 0 or 130, no traceback, and the MLflow run FINISHED with its plots (the signal came
after training) or KILLED with a clear line (it came before the last step was done); never RUNNING.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY = ["model.n_seq=16", "model.d_model=16", "model.n_layers=1", "koopman.dim=8", "koopman.sample_tokens=32",
        "trainer.batch_size=4", "trainer.max_steps=12", "trainer.eval_every=4", "data.n_train_tokens=4000",
        "data.n_val_tokens=1000", "data.vocab_size=32"]
OFFSETS_S = [round(0.1 * i, 1) for i in range(12)]


def one_try(offset_s: float, outputs: Path) -> dict:
    from mlflow import MlflowClient

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "kbk.run", *TINY, f"paths.outputs={outputs}"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("[kbk] step 12/12"):
            break
    time.sleep(offset_s)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    client = MlflowClient(f"sqlite:///{outputs / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("kbk").experiment_id])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    return {"offset_s": offset_s, "exit": proc.returncode, "traceback": "Traceback" in err,
            "status": run.info.status, "plots": "plots" in artifacts,
            "line": next((x for x in err.splitlines() if x.startswith("kbk: ")), "")}


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, offset in enumerate(OFFSETS_S):
            outputs = Path(tmp) / f"try{i}"
            rows.append(one_try(offset, outputs))
            shutil.rmtree(outputs, ignore_errors=True)
            print(rows[-1], flush=True)
    ok = [r for r in rows if not r["traceback"] and r["status"] in ("FINISHED", "KILLED")
          and (r["status"] != "FINISHED" or r["plots"])]
    lines = ["# SIGINT in the last second of a run", "", f"Command: `python {Path(__file__).relative_to(ROOT)}`", "",
             f"{len(ok)} of {len(rows)} tries ended cleanly (no traceback; FINISHED with plots, or KILLED); "
             f"{sum(r['status'] == 'RUNNING' for r in rows)} left a run RUNNING.", "",
             "| offset after the last step (s) | exit | traceback | MLflow status | plots | message |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['offset_s']} | {r['exit']} | {r['traceback']} | {r['status']} | {r['plots']} | {r['line']} |"
              for r in rows]
    out = Path(__file__).with_name("sigint_after_training_results.md")
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
