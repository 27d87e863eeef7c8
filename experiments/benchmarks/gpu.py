"""Training throughput at the seed's configuration, and the BK-Core against attention across N, on a GPU.

    python experiments/benchmarks/gpu.py                          # CUDA (device auto); writes gpu_results.md
    python experiments/benchmarks/gpu.py --device cpu --quick     # CPU smoke run at small sizes, same file

1. Tokens/s of one training step (`HybridTrainer.train_step`: forward, backward, clipping, AdamW, and with Koopman
   on the Koopman terms and the DMD update) at the seed's configuration (`experiment=seed_colab`: model=small,
   d_model 64, 4 layers, n_seq 128, batch 32, koopman_dim 256, the seed's non-causal BK-Core) on synthetic data
   with the seed's vocabulary (30,000; WikiText-2 needs the hub), Koopman on/off × fp32/bf16, the four trainers
   interleaved step by step in a random order.
2. Forward + backward of the BK-Core (`causal_resolvent_diagonal`, complex64, B = 8) against torch's
   `scaled_dot_product_attention` (causal, B = 8, 4 heads of 16: the attention of a d_model-64 layer) on the same
   device, for N = 128 ... 4096, interleaved per round; medians.

On CUDA every timed call ends with `torch.cuda.synchronize()`. The results file says which device it ran on: a CPU
smoke run is labelled as such and is no GPU measurement.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from interleaved import interleaved

from kbk import interactive
from kbk.models.bk_core import causal_resolvent_diagonal

HERE = Path(__file__).resolve().parent
SEED_VOCAB = 30_000
KOOPMAN = ("on", "off")
PRECISIONS = ("fp32", "bf16")
LENGTHS = (128, 256, 512, 1024, 2048, 4096)
QUICK_LENGTHS = (128, 512, 1024)
BATCH, HEADS, HEAD_DIM = 8, 4, 16


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return f"GPU: {torch.cuda.get_device_name(torch.device(device))}"
    return f"CPU: {platform.processor() or platform.machine()} (no GPU: a smoke run, not a GPU measurement)"


def timed(fn: Callable[[], object], device: str) -> float:
    """Seconds one call of `fn` takes, the device's queue drained before and after."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def throughput(device: str, warmup: int, steps: int) -> list[str]:
    trainers, batches = {}, {}
    for koopman in KOOPMAN:
        for precision in PRECISIONS:
            overrides = ["experiment=seed_colab", "data=synthetic", f"data.vocab_size={SEED_VOCAB}",
                         f"data.n_train_tokens={(warmup + steps + 2) * 32 * 128}", "data.n_val_tokens=5000",
                         f"trainer.device={device}", f"trainer.precision={precision}"]
            if koopman == "off":
                overrides.append("koopman=off")
            trainer = interactive.trainer_for(overrides)
            trainers[koopman, precision] = trainer
            batches[koopman, precision] = iter(trainer.train_batches.epoch(0))
    def measure(key: tuple[str, str]) -> float:
        trainer = trainers[key]
        x, y = (t.to(trainer.device) for t in next(batches[key]))
        elapsed = timed(lambda: trainer.train_step(x, y), device)
        trainer.step += 1
        return elapsed

    times = interleaved(trainers, warmup, steps, measure)
    tokens = 32 * 128
    lines = ["| Koopman | precision | step (ms, median) | tokens/s | step time / Koopman off fp32 |",
             "|---|---|---:|---:|---:|"]
    base = statistics.median(times["off", "fp32"])
    for key, values in times.items():
        median = statistics.median(values)
        lines.append(f"| {key[0]} | {key[1]} | {median * 1000:.1f} | {tokens / median:,.0f} | {median / base:.2f}× |")
    return lines


def mixing_layers(device: str, lengths: tuple[int, ...], rounds: int) -> list[str]:
    def bk_core(n: int) -> Callable[[], object]:
        diag = (-2 + torch.randn(BATCH, n, device=device)).requires_grad_()
        return lambda: causal_resolvent_diagonal(diag, dtype=torch.complex64).imag.sum().backward()

    def attention(n: int) -> Callable[[], object]:
        q, k, v = (torch.randn(BATCH, HEADS, n, HEAD_DIM, device=device, requires_grad=True) for _ in range(3))
        return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()

    calls = {(name, n): make(n) for n in lengths for name, make in (("BK-Core", bk_core), ("SDPA", attention))}
    for call in calls.values():
        call()  # warm-up: kernels chosen, memory allocated
    times: dict[tuple[str, int], list[float]] = {key: [] for key in calls}
    rng = random.Random(1)
    for _ in range(rounds):
        order = list(calls)
        rng.shuffle(order)
        for key in order:
            times[key].append(timed(calls[key], device))
    lines = ["| N | BK-Core fwd+bwd (ms, median) | SDPA fwd+bwd (ms, median) | SDPA / BK-Core |",
             "|---:|---:|---:|---:|"]
    for n in lengths:
        bk, sdpa = (statistics.median(times[name, n]) * 1000 for name in ("BK-Core", "SDPA"))
        lines.append(f"| {n:,} | {bk:.3f} | {sdpa:.3f} | {sdpa / bk:.2f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cuda, cuda:<index>, cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes and few steps (the CPU smoke run)")
    parser.add_argument("--output", type=Path, default=HERE / "gpu_results.md")
    args = parser.parse_args()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    warmup, steps, rounds = (1, 3, 5) if args.quick else (5, 30, 30)
    lengths = QUICK_LENGTHS if args.quick else LENGTHS
    command = f"python experiments/benchmarks/gpu.py --device {args.device}{' --quick' if args.quick else ''}"
    started = time.perf_counter()
    lines = [
        f"# GPU benchmark — this run: {'GPU' if device.startswith('cuda') else 'CPU smoke run, NOT a GPU measurement'}",
        "",
        f"`{command}`, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, "
        f"{device_name(device)}, {torch.get_num_threads()} CPU thread(s).",
        "",
        *([] if device.startswith("cuda") else [
            "No GPU was available when this file was written: nothing in it, and none of the CUDA tests "
            "(tests/test_cuda.py), has run on a GPU. It shows that the benchmark runs end to end; rerun it without "
            "`--device cpu --quick` on a CUDA machine for the GPU figures.", ""]),
        f"## Training throughput at the seed's configuration ({steps} timed steps after {warmup} warm-up)",
        "",
        "experiment=seed_colab on synthetic data with vocabulary 30,000 (model=small: d_model 64, 4 layers, n_seq 128,"
        " batch 32, koopman_dim 256); the four trainers interleaved step by step.",
        "",
        *throughput(device, warmup, steps),
        "",
        f"## BK-Core against attention across N ({rounds} rounds, interleaved)",
        "",
        f"Forward + backward; BK-Core: `causal_resolvent_diagonal`, complex64, B = {BATCH}; SDPA: "
        f"`scaled_dot_product_attention(is_causal=True)`, B = {BATCH}, {HEADS} heads × {HEAD_DIM}.",
        "",
        *mixing_layers(device, lengths, rounds),
        "",
        f"Took {time.perf_counter() - started:.0f} s.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.output.write_text(text)


if __name__ == "__main__":
    main()
