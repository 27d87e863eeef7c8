"""Validation perplexity against training seconds for the baselines study (kbk.report plots it against steps).

    python experiments/baselines/wall_time.py synthetic     # reads the sweep baselines_synthetic from the store
    python experiments/baselines/wall_time.py kjv
    python experiments/baselines/wall_time.py kjv_n512   # the sweep baselines_kjv_n512 (long_context.sh)

Writes experiments/baselines/<data>/wall_time.md and wall_time.png. kbk logs no cumulative training time per step,
but it logs `perf/step_ms`, the mean step time of each logging window (every trainer.log_every = 10 steps); the
training seconds at step s are the sum of window mean × window length up to s (evaluation time excluded, as in
the run's own `train_seconds`). Every number comes from the MLflow store.

Caveat, stated in the output too: the trials ran one after another on 2 CPU cores shared with other sweeps, so a
trial's seconds include whatever load it met. The side-by-side cost is experiments/benchmarks/context_length.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from kbk import compare  # noqa: E402
from kbk.compare.select import metric_histories  # noqa: E402

HERE = Path(__file__).resolve().parent
GROUP_BY = ["model.arch", "model.d_model", "koopman.enabled", "model.causal"]


def label(key: tuple) -> str:
    arch, width, koopman, causal = key
    if arch == "transformer":
        return f"GPT d_model {width}"
    text = "ResNet-BK, Koopman " + ("on" if koopman.lower() == "true" else "off")
    return text + ("" if causal.lower() == "true" else ", non-causal")


def curve(history: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """(step, train_seconds, val/ppl) at each evaluation of one run."""
    ms = history["perf/step_ms"]
    lengths = ms["step"].diff().fillna(ms["step"].iloc[0])
    seconds = pd.Series((ms["value"] * lengths / 1000.0).cumsum().to_numpy(), index=ms["step"].to_numpy())
    ppl = history["val/ppl"]
    at = np.interp(ppl["step"], seconds.index, seconds.to_numpy())
    return pd.DataFrame({"step": ppl["step"].to_numpy(), "train_seconds": at, "val/ppl": ppl["value"].to_numpy()})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", choices=["synthetic", "kjv", "kjv_n512"])
    args = p.parse_args(argv)
    sweep = f"baselines_{args.data}"
    runs = compare.runs(sweep=sweep)
    histories = metric_histories(runs.attrs["uri"], list(runs["run_id"]), ["perf/step_ms", "val/ppl"])
    rows = []
    for _, run in runs.iterrows():
        key = tuple(str(run[f"params.{k}"]) for k in GROUP_BY)
        c = curve(histories[run["run_id"]])
        c["group"], c["seed"] = label(key), run["params.seed"]
        rows.append(c)
    frame = pd.concat(rows, ignore_index=True)
    mean = frame.groupby(["group", "step"], as_index=False)[["train_seconds", "val/ppl"]].mean()
    n = frame.groupby("group")["seed"].nunique()

    out = HERE / args.data
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for group, g in mean.groupby("group"):
        ax.plot(g["train_seconds"], g["val/ppl"], marker="o", label=f"{group} (n = {n[group]})")
    if args.data == "synthetic" and "metrics.val/ppl_floor" in runs:
        ax.axhline(runs["metrics.val/ppl_floor"].mean(), color="grey", linestyle="--", label="Bayes floor")
    ax.set_xlabel("training seconds (loaded 2-core CPU; evaluation excluded)")
    ax.set_ylabel("val/ppl (mean over seeds)")
    ax.set_title(f"{sweep}: validation perplexity against training time")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "wall_time.png", dpi=110)

    lines = [f"# {sweep}: validation perplexity against training seconds", "",
             f"Command: `python experiments/baselines/wall_time.py {args.data}` (from the MLflow store "
             f"`{runs.attrs['uri']}`, sweep `{sweep}`). Mean over seeds at each evaluation; training seconds from "
             "the logged `perf/step_ms` windows. The trials ran one after another on 2 CPU cores shared with other "
             "sweeps, so seconds include the load each trial met: the side-by-side cost is "
             "[context_length_results.md](../../benchmarks/context_length_results.md).", "",
             "| variant | n | step | train seconds | val/ppl |", "|---|---:|---:|---:|---:|"]
    for _, r in mean.iterrows():
        lines.append(f"| {r['group']} | {n[r['group']]} | {int(r['step'])} | {r['train_seconds']:.0f} | "
                     f"{r['val/ppl']:.2f} |")
    lines += ["", "![val/ppl against training seconds](wall_time.png)"]
    (out / "wall_time.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
