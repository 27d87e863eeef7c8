"""What a run's MLflow page opens on: no all-zero `events/*` charts (MLflow's charts tab sorts its sections by name,
so they came before train/ and val/), every counter still in summary.json; debug=profile's profile/ folder among
the run's artifacts."""

from __future__ import annotations

import json

from conftest import TINY, artifact_paths, mlflow_runs
from test_run import run_in_process


def test_events_are_logged_once_nonzero_and_the_profile_folder_is_an_artifact(tmp_path, mlflow_store):
    outputs = tmp_path / "outputs"
    db = mlflow_store(outputs)
    # debug=profile tracks nothing by default; tracking=local keeps its trace with the run
    run_in_process([*TINY, "debug=profile", "tracking=local", "trainer.profile_steps=2", "trainer.max_steps=4",
                    "trainer.eval_every=4", "tracking.system_metrics=false", f"paths.outputs={outputs}"],
                   tmp_path / "job")
    (run,) = mlflow_runs(db)
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    counters = {k: v for k, v in summary.items() if k.startswith("events/")}
    assert len(counters) == 5 and counters["events/nan_lm_skipped"] == 0.0  # summary.json: every counter
    logged = {k: v for k, v in run.data.metrics.items() if k.startswith("events/")}
    assert logged == {k: v for k, v in counters.items() if v}, logged  # the store: the nonzero ones
    assert "events/dmd_accepted" in logged  # (DMD ran: a nonzero counter is logged)
    assert {"profile/trace.json", "profile/key_averages.txt"} <= artifact_paths(db, run.info.run_id)
