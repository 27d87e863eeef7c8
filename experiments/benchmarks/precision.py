"""Training step time, fp32 against bf16 autocast (`trainer.precision`), on this machine's CPU.

    python experiments/benchmarks/precision.py          # writes precision_results.md next to this file
    python experiments/benchmarks/precision.py --quick  # a smoke run (fewer steps)

For model=tiny and model=small (kbk's defaults otherwise: Koopman on, synthetic data, batch 32), one trainer per
precision, all four interleaved step by step in a random order (load from other processes hits them alike), each
timed over the same training steps after a warm-up; one torch thread. The BK-Core runs in complex64 either way
(bf16 reaches the linear layers and the Koopman lifts only).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from interleaved import interleaved

from kbk import build
from kbk.config import register_configs, settings_of
from kbk.paths import CONF_DIR, register_resolvers
from kbk.training.trainer import HybridTrainer, optimizer_steps

MODELS = ("tiny", "small")
PRECISIONS = ("fp32", "bf16")


def make_trainer(model: str, precision: str) -> HybridTrainer:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = settings_of(compose("config", overrides=[f"model={model}", f"trainer.precision={precision}",
                                                        "trainer.device=cpu", "tracking=none",
                                                        # the Koopman loss from the first step (the costlier phase)
                                                        "schedule=constant", "schedule.warmup=0"]))
    torch.manual_seed(0)
    data = build.corpus(cfg)
    train, val = build.batches(cfg, data)
    options = build.trainer_options(cfg)
    return HybridTrainer(build.model(cfg, data.vocab_size), train, val, options,
                         build.schedule(cfg, optimizer_steps(len(train), options)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    warmup, steps = (2, 5) if args.quick else (5, 40)
    register_configs()
    register_resolvers()
    torch.set_num_threads(1)
    trainers = {(m, p): make_trainer(m, p) for m in MODELS for p in PRECISIONS}
    batches = {key: iter(t.train_batches.epoch(0)) for key, t in trainers.items()}
    losses: dict[tuple[str, str], list[float]] = {key: [] for key in trainers}

    def measure(key: tuple[str, str]) -> float:
        x, y = next(batches[key])
        start = time.perf_counter()
        metrics = trainers[key].train_step(x, y)
        elapsed = time.perf_counter() - start
        trainers[key].step += 1
        losses[key].append(metrics["train/loss_lm"])
        return elapsed

    times = interleaved(trainers, warmup, steps, measure)
    lines = [
        "# Training step time: fp32 against bf16 autocast (CPU)",
        "",
        f"`python experiments/benchmarks/precision.py{' --quick' if args.quick else ''}`, "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, one torch thread, {steps} timed steps after {warmup} "
        f"warm-up steps, the four trainers interleaved in random order; Koopman loss on every step; "
        f"batch 32, synthetic data.",
        "",
        "| model | fp32 step (ms, median) | bf16 step (ms, median) | bf16 / fp32 | train loss after the last step "
        "(fp32 / bf16) |",
        "|---|---:|---:|---:|---|",
    ]
    for m in MODELS:
        fp32, bf16 = (statistics.median(times[(m, p)]) * 1000 for p in PRECISIONS)
        lines.append(f"| {m} | {fp32:.1f} | {bf16:.1f} | {bf16 / fp32:.2f} | {losses[(m, 'fp32')][-1]:.3f} / "
                     f"{losses[(m, 'bf16')][-1]:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick:
        (Path(__file__).with_name("precision_results.md")).write_text(text)


if __name__ == "__main__":
    main()
