"""The Koopman-mode gap of one or more kbk sweeps, read from the MLflow store (and the trials' final checkpoints).

    python experiments/koopman_mode_gap/gap.py --sweep koopman_mode_gap_kjv --out experiments/koopman_mode_gap/kjv/gap
    python experiments/koopman_mode_gap/gap.py --sweep koopman_dim_kjv --group-by koopman.dim --out /tmp/gap

Per group of `--group-by` params (seeds pooled; every interval is a 95% Student-t interval over the seeds of the
within-run difference, so each seed is paired with itself):

1. The gap over training: at every evaluation step, val/ppl_koopman − val/ppl (whole-stack Koopman mode against
   the standard model) and their ratio, from the runs' metric histories.
2. Each layer alone, at the final evaluation (the trainer's `koopman/<layer>/val_ppl_{koopman,skip}_only`, on its
   first `trainer.layerwise_tokens` validation tokens): skip-only − Koopman-only (> 0: the Koopman layer beats
   skipping the layer) and Koopman-only − standard on the same tokens (`koopman/layerwise_val_ppl`).
3. The whole stack at the final checkpoint: the trainer logs no "skip every layer" perplexity, so each trial's
   final checkpoint (<trial folder>/checkpoints/last.pt, loaded by kbk.evaluate.load_trained) is
   evaluated here on the whole validation split with every block standard, every block in Koopman mode and every
   block skipped (the embeddings straight into the head), with the trainer's own `evaluate`. A checkpoint
   overwritten by a later run of the same config is reported and left out (`--no-checkpoints` skips this part).

Writes <out>/README.md (the tables) and <out>/gap.png (the gap against the step, mean over seeds, 95% band).
Rerunnable: it only reads the store and the checkpoints.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # this checkout's kbk, not whichever one the environment has installed


def t_interval(values) -> tuple[float, float, float, int]:
    """(mean, low, high, n) of the finite values; NaN bounds for fewer than two."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    if n == 1:
        return float(x[0]), math.nan, math.nan, 1
    half = float(stats.t.ppf(0.975, n - 1)) * float(x.std(ddof=1)) / math.sqrt(n)
    return float(x.mean()), float(x.mean()) - half, float(x.mean()) + half, n


def fmt(mean: float, low: float, high: float, digits: int = 2) -> str:
    if math.isnan(mean):
        return "—"
    if math.isnan(low):
        return f"{mean:+.{digits}f}"
    star = " *" if low > 0 or high < 0 else ""
    return f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]{star}"


def load_json(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def finished_trials(uri: str, sweep: str) -> pd.DataFrame:
    import mlflow

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["kbk"], filter_string=f"tags.`kbk.sweep` = '{sweep}'",
                              output_format="pandas")
    if runs.empty:
        sys.exit(f"gap.py: no runs of sweep {sweep!r} in {uri}. Fix: run the sweep first, or pass --uri")
    runs = runs[(runs.get("tags.kbk.role") == "trial") & (runs["status"] == "FINISHED")]
    if runs.empty:
        sys.exit(f"gap.py: sweep {sweep!r} has no finished trial yet in {uri}")
    return runs.reset_index(drop=True)


def in_order(runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Runs sorted by their group params (numerically where they are numbers), then seed: tables list groups in
    that order."""
    def natural(value):
        try:
            return (0, float(value), "")
        except (TypeError, ValueError):
            return (1, 0.0, str(value))

    columns = [f"params.{k}" for k in keys] + ["params.seed"]
    order = sorted(runs.index, key=lambda i: tuple(natural(runs.at[i, c]) for c in columns))
    return runs.loc[order].reset_index(drop=True)


def group_label(row: pd.Series, keys: list[str]) -> str:
    return ", ".join(f"{k}={row.get(f'params.{k}')}" for k in keys) or "all"


def gap_over_steps(uri: str, runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per (group, step): the seeds' val/ppl, val/ppl_koopman and their difference and ratio."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    rows = []
    for _, run in runs.iterrows():
        hist = {}
        for metric in ("val/ppl", "val/ppl_koopman"):
            hist[metric] = {p.step: p.value for p in client.get_metric_history(run["run_id"], metric)}
        for step in sorted(set(hist["val/ppl"]) & set(hist["val/ppl_koopman"])):
            std, kop = hist["val/ppl"][step], hist["val/ppl_koopman"][step]
            rows.append({"group": group_label(run, keys), "seed": run.get("params.seed"), "step": step,
                         "ppl": std, "ppl_koopman": kop, "gap": kop - std, "ratio": kop / std})
    return pd.DataFrame(rows)


def layer_rows(runs: pd.DataFrame, keys: list[str]) -> list[tuple[str, int, dict]]:
    out = []
    layers = sorted({int(c.split("/")[1]) for c in runs.columns
                     if c.startswith("metrics.koopman/") and c.endswith("/val_ppl_skip_only")})
    for group, rows in runs.groupby(runs.apply(lambda r: group_label(r, keys), axis=1), sort=False):
        for layer in layers:
            kop = rows[f"metrics.koopman/{layer}/val_ppl_koopman_only"]
            skip = rows[f"metrics.koopman/{layer}/val_ppl_skip_only"]
            std = rows["metrics.koopman/layerwise_val_ppl"]
            out.append((group, layer, {"koopman_only": t_interval(kop), "skip_only": t_interval(skip),
                                       "standard": t_interval(std), "skip_minus_koopman": t_interval(skip - kop),
                                       "koopman_minus_standard": t_interval(kop - std)}))
    return out


def whole_stack(uri: str, runs: pd.DataFrame, keys: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """Per trial: validation PPL with every block standard / Koopman / skipped, from its final checkpoint."""
    from kbk import build
    from kbk.data.batching import TokenBatches
    from kbk.evaluate import load_trained
    from kbk.training.trainer import HybridTrainer, safe_exp

    rows, notes = [], []
    for _, run in runs.iterrows():
        run_id = run["run_id"]
        trained = load_trained(run_id, device="cpu", uri=uri)
        last_step = run.get("metrics.steps")
        if last_step is not None and math.isfinite(last_step) and trained.step != int(last_step):
            notes.append(f"trial {run_id}: its checkpoint is at step {trained.step}, not the run's last step "
                         f"{int(last_step)} (overwritten by a later run of the same config): left out")
            continue
        writer = load_json(trained.checkpoint.parent / "run.json").get("run_id")
        if writer and writer != run_id:  # the same config hash: the same settings and seed, trained again
            notes.append(f"trial {run_id}: its checkpoint was last written by run {writer} of the same config "
                         f"(same settings and seed, step {trained.step}): evaluated")
        settings = trained.settings
        batches = TokenBatches(trained.corpus.split("val"), settings.model.n_seq, settings.trainer.batch_size,
                               shuffle=False)
        options = dataclasses.replace(build.trainer_options(settings), eval_batches=None)
        trainer = HybridTrainer(trained.model, batches, batches, options)  # evaluation only: never steps
        row = {"group": group_label(run, keys), "seed": run.get("params.seed"), "run_id": run_id}
        for mode in ("standard", "koopman", "skip"):
            row[mode] = safe_exp(trainer.evaluate(mode))
        row["logged_val_ppl"] = run.get("metrics.val/ppl")
        rows.append(row)
        print(f"gap.py: {row['group']} seed {row['seed']}: standard {row['standard']:.2f}, Koopman "
              f"{row['koopman']:.2f}, skip every layer {row['skip']:.2f}", file=sys.stderr, flush=True)
    return pd.DataFrame(rows), notes


def plot(gaps: pd.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    gaps = gaps.assign(relative=(gaps["ratio"] - 1.0) * 100.0)  # the gap in % of the standard perplexity
    for group, rows in gaps.groupby("group", sort=False):
        for ax, column in zip(axes, ("gap", "relative"), strict=True):
            steps, mean, low, high = [], [], [], []
            for step, at in rows.groupby("step"):
                m, lo, hi, _ = t_interval(at[column])
                steps.append(step), mean.append(m), low.append(lo), high.append(hi)
            line, = ax.plot(steps, mean, "-o", ms=3, label=group)
            ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
    axes[0].axhline(0, color="grey", lw=0.8)
    axes[1].axhline(0, color="grey", lw=0.8)
    if gaps["gap"].abs().max() > 20 * max(1.0, gaps.groupby("group")["gap"].last().abs().max()):
        # Before Koopman learning starts the gap is a hundred times what it is after; on a linear axis the
        # interesting part (the end) is a flat line at zero. Linear within ±1 PPL, logarithmic beyond.
        for ax in axes:
            ax.set_yscale("symlog", linthresh=1.0)
            ax.grid(True, which="major", alpha=0.3)
    axes[0].set(xlabel="training step", ylabel="val/ppl_koopman − val/ppl", title="Koopman-mode gap")
    axes[1].set(xlabel="training step", ylabel="(val/ppl_koopman / val/ppl − 1) in %",
                title="Koopman-mode gap, relative")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{title} (mean over seeds, 95% t band)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep", required=True, help="the sweep's study name (tag kbk.sweep)")
    p.add_argument("--group-by", nargs="*", default=[], help="params that make a group (default: none, one group)")
    p.add_argument("--uri", help="tracking URI (default: the SQLite store under outputs/, or $KBK_OUTPUTS)")
    p.add_argument("--out", required=True, help="folder for README.md and gap.png")
    p.add_argument("--no-checkpoints", action="store_true", help="skip the whole-stack pass over the checkpoints")
    p.add_argument("--command", help="the command to print as this report's reproduction line")
    args = p.parse_args(argv)
    from kbk.compare.select import tracking_uri

    args.uri = tracking_uri(args.uri)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    keys = args.group_by
    runs = in_order(finished_trials(args.uri, args.sweep), keys)
    gaps = gap_over_steps(args.uri, runs, keys)
    command = args.command or "python experiments/koopman_mode_gap/gap.py " + " ".join(argv or sys.argv[1:])
    lines = [f"# Koopman-mode gap: sweep `{args.sweep}`", "",
             f"Generated by `{command}` from `{args.uri}` ({len(runs)} finished trials; seeds "
             f"{', '.join(sorted(map(str, runs['params.seed'].unique())))}). Every interval is the 95% Student-t "
             "interval over seeds of a within-run difference; `*` marks one that excludes zero.", ""]

    lines += ["## The gap over training (whole-stack Koopman mode against the standard model)", "",
              "val/ppl_koopman − val/ppl at each evaluation (the trainer's validation batches), mean over seeds.", "",
              "| group | step | n | val/ppl | val/ppl_koopman | gap (PPL) | ratio |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for (group, step), at in gaps.groupby(["group", "step"], sort=False):
        gap, ratio = t_interval(at["gap"]), t_interval(at["ratio"])
        lines.append(f"| {group} | {step} | {gap[3]} | {at['ppl'].mean():.2f} | {at['ppl_koopman'].mean():.2f} | "
                     f"{fmt(*gap[:3])} | {ratio[0]:.3f} [{ratio[1]:.3f}, {ratio[2]:.3f}] |")
    plot(gaps, out / "gap.png", f"sweep {args.sweep}")
    lines += ["", "![the gap against the training step](gap.png)", ""]

    lines += ["## Each layer alone (final evaluation)", "",
              "On the trainer's first `trainer.layerwise_tokens` validation tokens: that layer in Koopman mode "
              "(Koopman-only) or skipped (skip-only), every other layer standard. skip − Koopman > 0: the Koopman "
              "layer beats skipping the layer.", "",
              "| group | layer | standard | Koopman-only | skip-only | skip − Koopman | Koopman − standard |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for group, layer, r in layer_rows(runs, keys):
        lines.append(f"| {group} | {layer} | {r['standard'][0]:.2f} | {r['koopman_only'][0]:.2f} | "
                     f"{r['skip_only'][0]:.2f} | {fmt(*r['skip_minus_koopman'][:3])} | "
                     f"{fmt(*r['koopman_minus_standard'][:3])} |")
    lines.append("")

    lines += ["## The whole stack (final checkpoints, the whole validation split)", ""]
    if args.no_checkpoints:
        lines += ["Not computed (--no-checkpoints).", ""]
    else:
        stack, notes = whole_stack(args.uri, runs, keys)
        lines += ["Every block standard, every block in Koopman mode, every block skipped (the embeddings straight "
                  "into the LM head): not logged by the trainer, evaluated here from each trial's final checkpoint "
                  "with the trainer's `evaluate`. `logged val/ppl` is the run's own final value, as a check.", "",
                  "| group | n | standard | logged val/ppl | all Koopman | all skipped | skip − Koopman | "
                  "Koopman − standard |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for group, rows in stack.groupby("group", sort=False):
            d_skip = t_interval(rows["skip"] - rows["koopman"])
            d_std = t_interval(rows["koopman"] - rows["standard"])
            lines.append(f"| {group} | {len(rows)} | {rows['standard'].mean():.2f} | "
                         f"{rows['logged_val_ppl'].mean():.2f} | {rows['koopman'].mean():.2f} | "
                         f"{rows['skip'].mean():.2f} | {fmt(*d_skip[:3])} | {fmt(*d_std[:3])} |")
        lines += [""] + [f"- {n}" for n in notes]
    (out / "README.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
