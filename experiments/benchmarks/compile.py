"""Does `trainer.compile=true` (torch.compile of the model) pay on this machine's CPU? Step time compiled vs eager.

    python experiments/benchmarks/compile.py            # writes compile_results.md next to this file (~15 min)
    python experiments/benchmarks/compile.py --quick    # a smoke run (fewer steps), no file written

For model=tiny and model=small (kbk's defaults otherwise: Koopman on with its terms on every step, synthetic data,
batch 32, fp32, CPU, one torch thread), an eager and a compiled trainer built by `kbk.interactive.trainer_for`
with `trainer.compile=false|true`, the same seed. Measured: the first training step (the compiled one compiles
there), one validation forward the first time (compiled again: eval mode is another graph) and after; then the
four trainers' training steps interleaved in a random order (load from other processes hits them alike), medians.
Break-even: the steps after which the compile time is paid back by the faster steps.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time
from pathlib import Path

import torch
from interleaved import interleaved

from kbk import interactive

MODELS = ("tiny", "small")
MODES = ("eager", "compiled")


def make_trainer(model: str, mode: str):
    return interactive.trainer_for([f"model={model}", "trainer.device=cpu", f"trainer.compile={mode == 'compiled'}",
                                    # the Koopman loss from the first step (the costlier phase)
                                    "schedule=constant", "schedule.warmup=0"])


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def validation_forward(trainer, x) -> None:
    trainer.model.eval()
    with torch.no_grad():
        trainer._forward(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    warmup, steps = (1, 3) if args.quick else (3, 30)
    torch.set_num_threads(1)
    started = time.perf_counter()
    trainers = {(m, mode): make_trainer(m, mode) for m in MODELS for mode in MODES}
    batches = {key: iter(t.train_batches.epoch(0)) for key, t in trainers.items()}
    val_batch = {key: next(iter(t.val_batches.epoch(0)))[0] for key, t in trainers.items()}
    first_step, first_eval, evals = {}, {}, {}
    losses: dict[tuple[str, str], float] = {}

    def step(key) -> float:
        trainer = trainers[key]
        x, y = next(batches[key])
        start = time.perf_counter()
        losses[key] = trainer.train_step(x, y)["train/loss_lm"]
        trainer.step += 1
        return time.perf_counter() - start

    for key in trainers:  # the compiled trainers compile here, one after the other
        first_step[key] = step(key)
        first_eval[key] = timed(lambda: validation_forward(trainers[key], val_batch[key]))  # noqa: B023
        evals[key] = statistics.median(timed(lambda: validation_forward(trainers[key], val_batch[key]))  # noqa: B023
                                       for _ in range(3))
    times = interleaved(trainers, warmup, steps, step)
    lines = [
        "# torch.compile of the model (`trainer.compile=true`) against eager, CPU",
        "",
        f"`python experiments/benchmarks/compile.py{' --quick' if args.quick else ''}`, "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()} (CPU only; no GPU measured), one torch thread, {steps} timed "
        f"training steps after {warmup} warm-up, the four trainers interleaved in random order; Koopman loss on every "
        f"step; batch 32, synthetic data. The machine was shared with other work, so absolute times are noisy; the "
        f"ratios come from interleaved steps.",
        "",
        "| model | eager step (ms, median) | compiled step (ms, median) | compiled / eager | first compiled step "
        "(s, compiling) | first compiled val forward (s) | val forward eager / compiled (ms) | break-even (steps) | "
        "train loss at the last step (eager / compiled) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for m in MODELS:
        eager, compiled = (statistics.median(times[m, mode]) for mode in MODES)
        compile_s = first_step[m, "compiled"] - first_step[m, "eager"] + first_eval[m, "compiled"]
        saved = eager - compiled
        break_even = f"{compile_s / saved:,.0f}" if saved > 0 else "never"
        lines.append(
            f"| {m} | {eager * 1000:.1f} | {compiled * 1000:.1f} | {compiled / eager:.2f} | "
            f"{first_step[m, 'compiled']:.1f} | {first_eval[m, 'compiled']:.1f} | {evals[m, 'eager'] * 1000:.1f} / "
            f"{evals[m, 'compiled'] * 1000:.1f} | {break_even} | {losses[m, 'eager']:.4f} / "
            f"{losses[m, 'compiled']:.4f} |")
    lines += ["", f"Took {time.perf_counter() - started:.0f} s."]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick:
        Path(__file__).with_name("compile_results.md").write_text(text)


if __name__ == "__main__":
    main()
