"""Benchmark kbk's sweeper: the same TPE search with and without median pruning, and the sweeper's overhead per
trial.

    python experiments/benchmarks/pruning.py            # ~3-6 minutes on 2 cores; writes pruning_results.md
    python experiments/benchmarks/pruning.py --quick    # a smoke run (few, short trials)

Both searches run the real sweep in this process (Hydra multirun, kbk's sweeper, the basic launcher, kbk.run's job
with MLflow tracking to a SQLite store under a temporary outputs folder) on the `tpe_pruned` preset at a small
size on synthetic data: same TPE seed, same search space, same budget of finished trials (`n_trials`, PRUNED ones
included), once with the preset's MedianPruner and once with `hydra/sweeper/pruner=none`.

Compute is counted in optimiser steps actually trained (a pruned trial stops at the evaluation where it is
pruned). The goal (docs/sweeps.md): pruning reaches a best val/ppl within 2% of the unpruned search's in at most 50% of
its steps.

Overhead per trial is everything but training and evaluation: a trial's wall time in the study (from `ask` to
`tell`: composing its config, launching, building data and model, the MLflow run, artifacts and plots, the Optuna
bookkeeping) minus the time spent in `HybridTrainer.fit` (training steps, evaluations, checkpoints). Goal: < 1 s.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

import kbk.run  # noqa: E402 (registers the config schema and resolvers)
from kbk.paths import CONF_DIR  # noqa: E402

SIZE = ["model=tiny", "model.d_model=32", "model.n_layers=2", "model.n_seq=32", "koopman.sample_tokens=64",
        "data.vocab_size=64", "data.n_train_tokens=60000", "data.n_val_tokens=4000", "trainer.batch_size=8",
        "trainer.layerwise_eval=false"]


def search_overrides(args: argparse.Namespace, pruned: bool, outputs: Path) -> list[str]:
    steps = args.steps
    return [
        "hparams_search=tpe_pruned",
        "koopman.dim=choice(16, 32, 64)",
        "trainer.lr=tag(log, interval(1e-4, 3e-2))",
        f"hydra.sweeper.study_name=bench_{'pruned' if pruned else 'full'}",
        f"hydra.sweeper.n_trials={args.trials}",
        "hydra.sweeper.sampler.seed=0",
        f"hydra.sweeper.sampler.n_startup_trials={args.startup}",
        # With pruning: the preset's MedianPruner as it ships (3 start-up trials, no warm-up).
        *([] if pruned else ["hydra/sweeper/pruner=none"]),
        "hydra.sweeper.plots=false",
        *SIZE,
        f"trainer.max_steps={steps}",
        f"trainer.eval_every={args.eval_every}",
        f"trainer.eval_batches={args.eval_batches}",
        f"paths.outputs={outputs}",
        f"hydra.sweep.dir={outputs / 'sweeps' / ('pruned' if pruned else 'full')}",
    ]


class FitTimer:
    """Wraps HybridTrainer.fit: seconds and steps per trial (keyed by KBK_TRIAL_NUMBER), pruned or not."""

    def __init__(self) -> None:
        self.seconds: dict[int, float] = {}
        self.steps: dict[int, int] = {}

    def install(self) -> None:
        from kbk.training.trainer import HybridTrainer

        original = HybridTrainer.fit
        timer = self

        def fit(trainer):
            number = int(os.environ.get("KBK_TRIAL_NUMBER", "-1"))
            t0 = time.perf_counter()
            try:
                return original(trainer)
            finally:
                timer.seconds[number] = time.perf_counter() - t0
                timer.steps[number] = trainer.step

        HybridTrainer.fit = fit


def task(cfg):
    """What `python -m kbk.run -m` runs for each job."""
    from hydra.core.hydra_config import HydraConfig

    return kbk.run.run(cfg, Path(HydraConfig.get().runtime.output_dir), sweep=True)


def sweep(overrides: list[str]) -> float:
    from hydra._internal.hydra import Hydra
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    hydra_app = Hydra.create_main_hydra_file_or_module(
        calling_file=str(ROOT / "kbk" / "run.py"), calling_module=None, config_path=str(CONF_DIR), job_name="kbk")
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the jobs' progress lines
            hydra_app.multirun(config_name="config", task_function=task, overrides=overrides,
                               with_log_configuration=False)
    finally:
        GlobalHydra.instance().clear()
    return time.perf_counter() - t0


def measure(args: argparse.Namespace, pruned: bool, outputs: Path) -> dict:
    import optuna

    from kbk.sweep.storage import open_storage

    timer = FitTimer()
    timer.install()
    wall = sweep(search_overrides(args, pruned, outputs))
    name = f"bench_{'pruned' if pruned else 'full'}"
    study = optuna.load_study(study_name=name, storage=open_storage(str(outputs / "optuna" / f"{name}.journal")))
    trials = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    overheads = [(t.datetime_complete - t.datetime_start).total_seconds() - timer.seconds[t.number]
                 for t in trials if t.number in timer.seconds]
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    best = min(complete, key=lambda t: t.value)
    return {
        "wall_s": wall,
        "n_complete": len(complete),
        "n_pruned": len(trials) - len(complete),
        "steps": sum(timer.steps.get(t.number, 0) for t in trials),
        "fit_s": sum(timer.seconds.get(t.number, 0.0) for t in trials),
        "best": best.value,
        "best_trial": best.number,
        "best_params": best.params,
        "overheads": overheads,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--startup", type=int, default=5, help="TPE's random start-up trials")
    parser.add_argument("--steps", type=int, default=200, help="optimiser steps per trial")
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--eval-batches", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="6 trials of 20 steps: a smoke run")
    parser.add_argument("--output", type=Path, default=HERE / "pruning_results.md")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.startup, args.steps, args.eval_every = 6, 3, 20, 5
    torch.set_num_threads(args.threads)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="kbk-pruning-") as tmp:
        full = measure(args, pruned=False, outputs=Path(tmp))
        pruned = measure(args, pruned=True, outputs=Path(tmp))
    report(args, full, pruned)


def report(args: argparse.Namespace, full: dict, pruned: dict) -> None:
    compute = pruned["steps"] / full["steps"]
    gap = pruned["best"] / full["best"] - 1.0
    overheads = sorted(full["overheads"] + pruned["overheads"])
    warm = overheads[:-1] if len(overheads) > 1 else overheads  # without the slowest (first trial: imports)
    lines = [
        "# Pruning benchmark (`experiments/benchmarks/pruning.py`)",
        "",
        f"Run {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs (shared), torch {torch.__version__}, {args.threads} thread(s).",
        "",
        "```bash",
        " ".join(["python experiments/benchmarks/pruning.py", *sys.argv[1:]]),
        "```",
        "",
        f"The `tpe_pruned` search (TPE seed 0, {args.startup} random start-up trials; koopman.dim ∈ {{16, 32, 64}}, "
        "schedule.max_weight, dmd.alpha, trainer.lr log-uniform in [1e-4, 3e-2]) on a small model (d_model 32, 2 "
        f"layers, n_seq 32, batch 8, synthetic vocab 64), {args.steps} steps per trial, val/ppl reported every "
        f"{args.eval_every} steps, budget {args.trials} finished trials. Pruned: the preset's "
        "MedianPruner(n_startup_trials=3, n_warmup_steps=0).",
        "",
        "| search | complete | pruned | steps trained | time in fit (s) | sweep wall (s) | best val/ppl | best trial |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, r in (("no pruning", full), ("median pruning", pruned)):
        lines.append(f"| {label} | {r['n_complete']} | {r['n_pruned']} | {r['steps']} | {r['fit_s']:.1f} | "
                     f"{r['wall_s']:.1f} | {r['best']:.4f} | {r['best_trial']} |")
    ok_compute, ok_best = compute <= 0.5, gap <= 0.02
    lines += [
        "",
        f"- Compute with pruning: **{compute:.0%}** of the unpruned search's steps (goal ≤ 50%: "
        f"{'met' if ok_compute else 'NOT met'}).",
        f"- Best val/ppl with pruning: **{gap:+.2%}** against the unpruned search's (goal within 2%: "
        f"{'met' if ok_best else 'NOT met'}).",
        f"- Best params (no pruning): `{full['best_params']}`; (pruning): `{pruned['best_params']}`.",
        "",
        "Framework overhead per trial, in-process (trial wall time from ask to tell, minus `HybridTrainer.fit`), over "
        f"{len(overheads)} trials of both searches:",
        "",
        "| median (s) | mean (s) | max (s) | mean without the slowest (s) |",
        "|---:|---:|---:|---:|",
        f"| {statistics.median(overheads):.3f} | {statistics.mean(overheads):.3f} | {max(overheads):.3f} | "
        f"{statistics.mean(warm):.3f} |",
        "",
        f"Goal < 1 s: {'met' if statistics.median(overheads) < 1.0 else 'NOT met'} (median). The slowest trial is the "
        "process's first, which imports the model, plotting and MLflow code.",
    ]
    text = "\n".join(lines) + "\n"
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
