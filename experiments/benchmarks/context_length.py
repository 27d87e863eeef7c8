"""Step time against context length: the tiny ResNet-BK (O(N) BK-Core) vs a GPT of matched parameter count
(O(N²) attention), at n_seq 128 / 512 / 2048 / 4096 with the same number of tokens per batch.

    python experiments/benchmarks/context_length.py            # writes context_length_results.md (~10 min, loaded)
    python experiments/benchmarks/context_length.py --quick    # smoke run: 2 rounds, no file written

Models (synthetic data, vocabulary 256, so the LM head does not hide the mixing layers): `model=tiny` (d_model 64,
2 layers) with Koopman off and on (kbk's defaults, Koopman terms learning), and a 2-layer, 4-head GPT
(`model=transformer koopman=off`) whose width `match_transformer_width` picks against the ResNet-BK's parameter
count with Koopman off (the language model alone) and with Koopman on (companions included) at that n_seq (the
position embeddings grow with n_seq, so the widths do too). Batch size × n_seq = 4,096 tokens at every length.

Measured per configuration: one training step (`HybridTrainer.train_step`: forward, backward, clipping, AdamW,
and for Koopman on the Koopman terms and the DMD update) on one fixed batch, and one evaluation forward pass
(`model.eval()`, no gradient) on the same batch. Every round runs all configurations of all lengths once, in
random order, after one warm-up step each; the table gives medians and minima over rounds, and the ratio GPT /
ResNet-BK as the median of per-round ratios (steps of one round ran back to back, so a shared machine's drifting
load mostly cancels in the ratio).

The machine this was written on is shared by several processes at once (load 5-13 on 2 cores), where wall times
are mostly waiting. So by default torch runs one thread and the primary figure is the CPU time of that thread
(`time.thread_time`: what the step computes, not how long it queued); wall times are shown beside it.
`--threads 2` measures the 2-thread wall time that a quiet machine's training runs see.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import os
import platform
import random
import statistics
import time
from pathlib import Path

import torch

from kbk import interactive
from kbk.models.transformer import match_transformer_width
from kbk.training.schedules import KoopmanWeightSchedule
from kbk.training.trainer import HybridTrainer

HERE = Path(__file__).resolve().parent
TOKENS_PER_BATCH = 4096
LENGTHS = (128, 512, 2048, 4096)
GPT_LAYERS, GPT_HEADS = 2, 4
SYNTHETIC = ["data=synthetic", "data.n_train_tokens=100000", "data.n_val_tokens=20000"]


def trainer_for(overrides: list[str]) -> HybridTrainer:
    """The trainer `python -m kbk.run OVERRIDES` would train (kbk.interactive), Koopman learning on from step 0."""
    trainer = interactive.trainer_for(overrides)
    # The Koopman terms at full weight from the first step, as in the learning phase of a run.
    trainer.schedule = KoopmanWeightSchedule("constant", 0.0, 0.1, warmup=0, total=10**9, unit="step")
    return trainer


def n_params(trainer: HybridTrainer) -> int:
    return sum(p.numel() for p in trainer.model.parameters())


def configurations(n_seq: int) -> dict[str, list[str]]:
    """name -> overrides at this length; GPT widths matched to the two ResNet-BK counts built here."""
    shape = [*SYNTHETIC, f"model.n_seq={n_seq}", f"trainer.batch_size={TOKENS_PER_BATCH // n_seq}"]
    bk = {"ResNet-BK, Koopman off": [*shape, "model=tiny", "koopman=off"],
          "ResNet-BK, Koopman on": [*shape, "model=tiny"]}
    out = dict(bk)
    for name, overrides in bk.items():
        with contextlib.redirect_stdout(io.StringIO()):
            target = n_params(trainer_for(overrides))
        width = match_transformer_width(target, 256, GPT_LAYERS, n_seq, GPT_HEADS)
        gpt = [*shape, "model=transformer", "koopman=off", f"model.d_model={width}", f"model.n_layers={GPT_LAYERS}",
               f"model.n_heads={GPT_HEADS}"]
        which = name.split(", ")[1]
        out[f"GPT matched to {which}"] = gpt
        if which == "Koopman off":
            # Attention dropout keeps PyTorch's CPU scaled_dot_product_attention on its unfused path (the N×N
            # weights and a dropout mask in memory); without dropout it runs the fused kernel.
            out[f"GPT matched to {which}, dropout 0"] = [*gpt, "model.dropout=0"]
    return out


REFERENCE = {  # each GPT against the ResNet-BK whose parameter count it matches
    "GPT matched to Koopman off": "ResNet-BK, Koopman off",
    "GPT matched to Koopman off, dropout 0": "ResNet-BK, Koopman off",
    "GPT matched to Koopman on": "ResNet-BK, Koopman on",
}


def timers(overrides: list[str]):
    """(training step, evaluation forward, parameter count) on one fixed batch of this configuration."""
    trainer = trainer_for(overrides)
    x, y = next(iter(trainer.train_batches.epoch(0)))
    x, y = x.to(trainer.device), y.to(trainer.device)

    def train_step() -> None:
        trainer.model.train()
        trainer.train_step(x, y)
        trainer.step += 1

    def eval_forward() -> None:
        trainer.model.eval()
        with torch.no_grad():
            trainer.model(x)

    return train_step, eval_forward, n_params(trainer)


def measure(rounds: int, lengths: tuple[int, ...]) -> tuple[dict, dict]:
    """{(n_seq, name): {"train": [ms...], "eval": [ms...]}}, {(n_seq, name): (params, overrides)}."""
    fns, info = {}, {}
    for n_seq in lengths:
        for name, overrides in configurations(n_seq).items():
            train_step, eval_forward, params = timers(overrides)
            fns[(n_seq, name, "train")] = train_step
            fns[(n_seq, name, "eval")] = eval_forward
            info[(n_seq, name)] = (params, overrides)
        print(f"built n_seq={n_seq}", flush=True)
    for fn in fns.values():
        fn()  # warm-up
    times: dict = {}
    for r in range(rounds):
        for key in random.sample(list(fns), len(fns)):
            t0, c0 = time.perf_counter(), time.thread_time()
            fns[key]()
            c1, t1 = time.thread_time(), time.perf_counter()
            entry = times.setdefault(key[:2], {})
            entry.setdefault(key[2], []).append(1e3 * (c1 - c0))
            entry.setdefault(f"{key[2]} wall", []).append(1e3 * (t1 - t0))
        print(f"round {r + 1}/{rounds}", flush=True)
    return times, info


def load() -> float:
    return os.getloadavg()[0]


def report(times: dict, info: dict, rounds: int, load_before: float, seconds: float, command: str,
           threads: int) -> list[str]:
    unit = "CPU" if threads == 1 else "wall"
    lines = [
        "# Step time against context length: ResNet-BK (O(N)) vs a GPT of matched parameters (O(N²)), CPU",
        "",
        f"- Command: `{command}`",
        f"- Date: {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}",
        f"- torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"{platform.machine()} {platform.python_implementation()} {platform.python_version()}",
        f"- Load average (1 min) before / after: {load_before:.2f} / {load():.2f} (the machine is shared with other "
        f"runs: read the ratios, each measured side by side within a round); {rounds} rounds; took {seconds:.0f} s",
        f"- {TOKENS_PER_BATCH:,} tokens per batch at every n_seq (batch size {TOKENS_PER_BATCH} / n_seq); synthetic "
        "data, vocabulary 256. ResNet-BK: `model=tiny` (d_model 64, 2 layers, 4 experts top-1) with `koopman=off` "
        "and with kbk's Koopman defaults (k = 256, learning on). GPT: `model=transformer koopman=off`, 2 layers, "
        "4 heads, width from `match_transformer_width` against the ResNet-BK's count at that n_seq; dropout 0.1 "
        "(kbk's default, as in the study's runs) and, matched to Koopman off, also 0 (attention dropout keeps "
        "PyTorch's CPU attention on its unfused path, which materialises the N×N weights).",
        "- train: one optimiser step (`HybridTrainer.train_step`) on a fixed batch; eval: one forward pass "
        "without gradient. " + ("CPU time of the one torch thread (`time.thread_time`), " if threads == 1 else
                                "Wall time, ") + "median (min) milliseconds over rounds, and the median wall time; "
        "ratio = median over rounds of GPT / ResNet-BK (> 1: the GPT is slower).",
        "",
        f"| n_seq | batch | model | params | train {unit} ms median (min) | eval {unit} ms median (min) | "
        "train wall ms (median) | train tokens/s |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for (n_seq, name), t in times.items():
        params, overrides = info[(n_seq, name)]
        width = next((o.split("=")[1] for o in overrides if o.startswith("model.d_model=")), "64")
        label = f"{name} (d_model {width})"
        tr, ev = statistics.median(t["train"]), statistics.median(t["eval"])
        lines.append(f"| {n_seq} | {TOKENS_PER_BATCH // n_seq} | {label} | {params:,} | "
                     f"{tr:.1f} ({min(t['train']):.1f}) | {ev:.1f} ({min(t['eval']):.1f}) | "
                     f"{statistics.median(t['train wall']):.1f} | "
                     f"{TOKENS_PER_BATCH / tr * 1e3:,.0f} |")
    lines += ["", f"GPT / ResNet-BK at the same n_seq and matched parameters (median of per-round ratios of {unit} "
              "time):", "",
              "| n_seq | GPT / ResNet-BK | train | eval |", "|---:|---|---:|---:|"]
    for n_seq in sorted({k[0] for k in times}):
        for gpt_name, bk_name in REFERENCE.items():
            gpt, bk = times[(n_seq, gpt_name)], times[(n_seq, bk_name)]
            ratios = {kind: statistics.median(g / b for g, b in zip(gpt[kind], bk[kind], strict=True))
                      for kind in ("train", "eval")}
            lines.append(f"| {n_seq} | {gpt_name} / {bk_name} | {ratios['train']:.2f} | {ratios['eval']:.2f} |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU time is the figure; see above)")
    p.add_argument("--quick", action="store_true", help="2 rounds at n_seq 128 and 512; prints, writes no file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    random.seed(0)
    rounds, lengths = (2, LENGTHS[:2]) if args.quick else (args.rounds, LENGTHS)
    load_before, t0 = load(), time.perf_counter()
    times, info = measure(rounds, lengths)
    command = "python experiments/benchmarks/context_length.py"
    command += "" if args.rounds == 6 else f" --rounds {args.rounds}"
    command += "" if args.threads == 1 else f" --threads {args.threads}"
    lines = report(dict(sorted(times.items())), info, rounds, load_before, time.perf_counter() - t0, command,
                   args.threads)
    print("\n".join(lines))
    if not args.quick:
        (HERE / "context_length_results.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
