"""Resuming a run: its checkpoint found, its MLflow run reopened (never another config's), and the run's metric
history in the store made exactly what an uninterrupted run would have logged. (Restoring the model, optimiser and
random state from the checkpoint is `HybridTrainer.resume`'s.)

The steps, in the order `kbk.run` takes them:

1. `resume_point`: `trainer.resume=true` finds this config's latest `last.pt` through its index folder
   `<outputs>/checkpoints/<config hash>/` (the folder lock and a `run.json` naming the run folder whose
   `checkpoints/` holds it; an older store's `last.pt` in the index folder itself still counts), none yet: train
   from the start; a path names one. Beside the checkpoint, `run.json` (`write_run_record`) names the MLflow run
   that wrote it.
2. `reopen_run`: that MLflow run is reopened (status back to RUNNING, `kbk.resumes` counted), after
   `refuse_foreign_run` made sure it was made with the same settings: a checkpoint of another config passed as
   `trainer.resume` must not change that config's run.
3. `continue_logging`: a run flushes its metrics to the store right after each checkpoint (and never in between),
   but a process can die between the checkpoint and the flush, or be stopped by a signal that flushes the
   metrics logged after the checkpoint. `catch_up` logs what the checkpoint's history has and the store lacks;
   `SkipStored` then drops the values the store already holds as the trainer computes those steps again
   (identically): no gap, no duplicate.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kbk.errors import CheckpointError, TrackingError
from kbk.files import write_atomic
from kbk.tracking.base import NullTracker
from kbk.tracking.mlflow_tracker import END_REASON_TAG, PARENT_RUN_TAG, MlflowTracker, check_parent, store_error
from kbk.tracking.mlflow_writer import MAX_PARAM_VALUE_LENGTH, describe
from kbk.urls import redact_url

RUN_RECORD = "run.json"
RESUMES_TAG = "kbk.resumes"
# Metrics present at every log point of their kind; the last step stored for any of them is how far the store got.
PROBE_KEYS = ("train/loss_lm", "val/loss", "epoch/loss_lm")


# ------------------------------------------------------------------------------------------- the checkpoint


def write_run_record(index: Path, checkpoints: Path, run_id: str | None, output_dir: Path) -> None:
    """`run.json` beside a run's checkpoints (the MLflow run that a resume continues, or that a later start ends; its
    run folder; its config hash) and in its config's index folder (that run and folder, and where the checkpoints
    are, relative to the index so that a moved outputs folder still resumes). The checkpoints' own record is
    written first: the index never points at a folder without one."""
    record = {"run_id": run_id, "output_dir": str(output_dir)}
    if checkpoints.resolve() != index.resolve():  # (a store from before run folders has them in one folder)
        write_atomic(checkpoints / RUN_RECORD, json.dumps({**record, "config_hash": index.name}, indent=2))
    where = os.path.relpath(checkpoints, index)
    write_atomic(index / RUN_RECORD, json.dumps({**record, "checkpoint_dir": where}, indent=2))


def read_run_record(folder: Path) -> dict[str, Any]:
    """The `run.json` in `folder`, {} if it is missing or unreadable (its writer was killed)."""
    try:
        return json.loads((folder / RUN_RECORD).read_text())
    except (OSError, ValueError):
        return {}


def checkpoint_folder(index: Path) -> Path:
    """Where the latest checkpoints of the config whose index folder is `index` are: the folder its `run.json`
    names, else (a store from before checkpoints moved into run folders) the index folder itself."""
    recorded = read_run_record(index).get("checkpoint_dir")
    return Path(os.path.normpath(index / recorded)) if recorded else index


def mark_ended(checkpoints: Path, how: str) -> None:
    """Record in the `run.json` beside a run's checkpoints that the run is over (`how`: finished, pruned), never to
    be resumed: `python -m kbk.clean` may delete what is left of them."""
    record = read_run_record(checkpoints)
    write_atomic(checkpoints / RUN_RECORD, json.dumps({**record, "ended": how}, indent=2))


@dataclass(frozen=True)
class ResumePoint:
    checkpoint: Path
    run_id: str | None  # the MLflow run that wrote the checkpoint (None: it was not tracked)


def resume_point(resume: Any, index: Path) -> ResumePoint | None:
    """The checkpoint to continue from (`trainer.resume`: true for the latest of the config whose index folder is
    `index`, or a path), or None to start fresh."""
    if resume is False or resume is None:
        return None
    if resume is True:
        checkpoint = checkpoint_folder(index) / "last.pt"
        if not checkpoint.is_file():  # a sweep re-running a killed trial lands here too
            from kbk import console

            console.say(f"trainer.resume=true: no checkpoint of this config in {checkpoint.parent}; training from "
                        f"the start")
            return None
    else:
        checkpoint = Path(str(resume)).expanduser()
        if not checkpoint.is_file():
            raise CheckpointError(f"trainer.resume={resume}: no such checkpoint file; pass the path of a last.pt "
                                  f"that kbk wrote, or trainer.resume=true to find this config's own")
    return ResumePoint(checkpoint, read_run_record(checkpoint.parent).get("run_id"))


def writes_to(previous: ResumePoint | None, index: Path, output_dir: Path) -> Path:
    """The folder a run writes its checkpoints to: where the config's latest checkpoint is when it resumes that one
    (one MLflow run, one checkpoint folder), else `checkpoints/` in its own run folder. A checkpoint given by path
    elsewhere is only read: its folder may belong to another config or another live run."""
    latest = checkpoint_folder(index)
    if previous is not None and previous.checkpoint.resolve().parent == latest.resolve():
        return latest
    return output_dir / "checkpoints"


# ------------------------------------------------------------------------------------------- the MLflow run


def refuse_foreign_run(uri: str, run_id: str, params: Mapping[str, str]) -> None:
    """Before reopening MLflow run `run_id` to continue it: a `TrackingError` if it was made with other settings
    (a checkpoint of another config passed as trainer.resume), so that nothing of that run is changed."""
    try:
        from mlflow import MlflowClient

        stored = MlflowClient(uri).get_run(run_id).data.params
    except Exception:  # noqa: BLE001 (a run that is not there: reopen_run says so clearly)
        return
    changed = [f"{k} (run: {stored[k]!r}, now: {v!r})" for k, v in params.items()
               if k in stored and stored[k] != v and len(v) <= MAX_PARAM_VALUE_LENGTH]
    if changed:
        raise TrackingError(
            f"trainer.resume: the checkpoint belongs to MLflow run {run_id}, made with other settings: "
            f"{'; '.join(changed)}. Fix: resume with the settings that run was made with (its .hydra/config.yaml), "
            f"or train these settings from scratch with trainer.resume=false"
        )


def reopen_run(uri: str, experiment: str, run_id: str, tags: Mapping[str, Any] | None = None,
               parent_run_id: str | None = None, **options: Any) -> MlflowTracker:
    """Reopen MLflow run `run_id` (status back to RUNNING, `kbk.resumes` counted, the last end reason removed) to
    continue it; `options` are `MlflowTracker`'s. Its stored name and parent are kept: a run that is not in
    `experiment` of the store, is deleted, or has another parent than `parent_run_id` is a `TrackingError`."""
    from mlflow.exceptions import MlflowException

    from kbk.tracking.store import experiment_id, prepared_store

    with prepared_store(uri) as client:
        exp_id = experiment_id(client, uri, experiment, create=False)
    try:
        if parent_run_id is not None:
            check_parent(client, uri, parent_run_id)
        try:
            run = client.get_run(run_id)
        except MlflowException as e:
            raise TrackingError(
                f"Cannot resume MLflow run {run_id}: it is not in {redact_url(uri)} ({describe(e)}). Fix: check "
                "tracking.uri (the store the run was made in), or start a new run instead of resuming."
            ) from e
        if run.info.experiment_id != exp_id:
            raise TrackingError(
                f"Cannot resume MLflow run {run_id}: it belongs to experiment id {run.info.experiment_id}, not "
                f"{experiment!r} (id {exp_id}). Fix: resume with the experiment the run was made in."
            )
        if run.info.lifecycle_stage != "active":
            raise TrackingError(
                f"Cannot resume MLflow run {run_id}: it is deleted. Fix: restore it "
                "(`mlflow runs restore --run-id ...`) or start a new run."
            )
        stored_parent = run.data.tags.get(PARENT_RUN_TAG)
        if parent_run_id is not None and stored_parent != parent_run_id:
            raise TrackingError(
                f"Cannot resume MLflow run {run_id} under parent {parent_run_id}: its parent is "
                f"{stored_parent}. Fix: resume it with its own parent (or none)."
            )
        client.update_run(run_id, status="RUNNING")
        if END_REASON_TAG in run.data.tags:  # the reason it stopped last time no longer holds
            client.delete_tag(run_id, END_REASON_TAG)
    except MlflowException as e:
        raise store_error(uri, "reopen", e) from e
    tracker = MlflowTracker(client, run_id, uri=uri, known_params=dict(run.data.params), experiment_id=exp_id,
                            run_name=run.info.run_name, **options)
    resumes = int(run.data.tags.get(RESUMES_TAG, "0") or 0) + 1
    tracker.set_tags({**{str(k): str(v) for k, v in (tags or {}).items()}, RESUMES_TAG: str(resumes)})
    return tracker


# ------------------------------------------------------------------------------------------- the metrics


def catch_up(tracker: Any, history: Sequence[tuple[int, Mapping[str, float]]]) -> int:
    """Log the entries of `history` past the last step the store holds; returns how many were logged."""
    stored = [s for s in (tracker.last_logged_step(k) for k in PROBE_KEYS) if s is not None]
    last_stored = max(stored, default=-1)
    missing = [(step, metrics) for step, metrics in history if step > last_stored]
    for step, metrics in missing:
        tracker.log_metrics(metrics, step)
    tracker.flush()
    return len(missing)


class SkipStored:
    """A resumed run's tracker, minus the metric values its MLflow run already holds.

    A run stopped by SIGTERM or Ctrl-C ends KILLED after flushing every metric it logged, including those after its
    last checkpoint; resumed from that checkpoint, it computes those steps again (identically) and must not log them
    twice. So a value is dropped when its key already has a value at that step or a later one in the store.
    """

    def __init__(self, tracker: MlflowTracker) -> None:
        self.tracker = tracker
        keys = tracker.client.get_run(tracker.run_id).data.metrics
        self.last_stored = {key: tracker.last_logged_step(key) for key in keys}

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        fresh = {k: v for k, v in metrics.items() if self.last_stored.get(k) is None or step > self.last_stored[k]}
        if fresh:
            self.tracker.log_metrics(fresh, step)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tracker, name)


def continue_logging(tracker: Any, history: Sequence[tuple[int, Mapping[str, float]]]) -> Any:
    """The tracker a trainer resumed with `history` logs to: an MLflow run (reopened, or new for a checkpoint
    written without one) caught up with the checkpoint and skipping the steps its store holds; a `NullTracker`
    as it is."""
    if isinstance(tracker, NullTracker):
        return tracker
    catch_up(tracker, history)
    return SkipStored(tracker)
