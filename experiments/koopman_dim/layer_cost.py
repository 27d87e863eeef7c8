"""The Koopman-mode layer's cost against the BK layer it replaces, at the koopman_dim study's dims.

    python experiments/koopman_dim/layer_cost.py           # writes layer_cost_results.md next to this file
    python experiments/koopman_dim/layer_cost.py --quick

experiments/benchmarks/koopman_cost.py measures this one-layer comparison at koopman_dim 256 only (its module
constant K); this script runs that same measurement (its `layer_comparison`: d_model 64, B = 32, N = 128, forward
only, interleaved timing, matmul FLOPs by torch's FlopCounterMode) once per koopman_dim 16 / 64 / 256 / 1024.
The BK-Core's O(N) scan (~10 flops per position) is not counted by FlopCounterMode; times are medians (minima) on a
shared machine, so read the ratios, each measured interleaved against the BK layer in the same call.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's kbk, not the installed one
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import koopman_cost  # noqa: E402  (the benchmark whose one-layer comparison is reused as is)

DIMS = (16, 64, 256, 1024)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", default=str(Path(__file__).with_name("layer_cost_results.md")))
    args = parser.parse_args(argv)
    repeats = 20 if args.quick else args.repeats
    load = os.getloadavg()[0]
    lines = [
        "# The Koopman-mode layer's cost against the BK layer, per koopman_dim (CPU)",
        "",
        f"- Command: `python experiments/koopman_dim/layer_cost.py{' --quick' if args.quick else ''}` "
        "(the one-layer comparison of `experiments/benchmarks/koopman_cost.py`, run at each koopman_dim)",
        f"- Date: {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.machine()}, load average before: {load:.2f} (shared machine: "
        "read the ratios (minima: the less noisy under load), each measured interleaved with the BK layer)",
        f"- d_model {koopman_cost.D}, B = {koopman_cost.BATCH}, N = {koopman_cost.N_SEQ}, forward only, {repeats} "
        "interleaved rounds per koopman_dim",
        "",
        "| koopman_dim | BK layer f(u): median (min) ms | Koopman mode ψ(Kφ(u)) − u: median (min) ms | "
        "BK matmul FLOPs/token | Koopman matmul FLOPs/token | time vs BK layer (medians) | time vs BK layer (minima) | "
        "FLOPs vs BK layer |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for k in DIMS:
        koopman_cost.K = k  # layer_comparison builds its block with koopman_dim = the module's K
        (_, bk_med, bk_min, bk_flops), (_, kp_med, kp_min, kp_flops) = koopman_cost.layer_comparison(repeats)
        lines.append(f"| {k} | {bk_med:.3f} ({bk_min:.3f}) | {kp_med:.3f} ({kp_min:.3f}) | {bk_flops:,.0f} | "
                     f"{kp_flops:,.0f} | {kp_med / bk_med:.2f}x | {kp_min / bk_min:.2f}x | "
                     f"{kp_flops / bk_flops:.2f}x |")
        print(lines[-1], flush=True)
    Path(args.output).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
