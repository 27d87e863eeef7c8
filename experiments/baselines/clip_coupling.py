"""Does Koopman learning reach the language model through the gradient-norm clip?

    python experiments/baselines/clip_coupling.py kjv_n512    # the setting of long_context.sh (kjv corpus needed)
    python experiments/baselines/clip_coupling.py synthetic   # the setting of run.sh (n_seq 128, batch 32)

With `koopman.detach_backbone=true` (the default) the Koopman terms' gradients reach only the Koopman companions,
but `trainer.grad_clip` clips the norm of all gradients together: on a step where that total exceeds the clip, the
companions' gradients enlarge the norm and shrink the backbone's update. This script trains the baselines study's
Koopman-on configuration (seeds 0, 1, 2; 400 steps) and records on every step, before the clip, the norm of the
backbone's gradients and of the companions'; per window of steps it prints how often the clip acted and by what
factor the companions changed the backbone's update (1.000: not at all). Writes experiments/baselines/<setting>/
clip_coupling.md.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
from pathlib import Path

import torch

from kbk.interactive import trainer_for

SETTINGS = {
    "synthetic": ["model=tiny", "trainer.max_steps=400", "trainer.eval_every=100"],
    "kjv": ["data=kjv", "model=tiny", "trainer.max_steps=400", "trainer.eval_every=100"],
    "kjv_n512": ["data=kjv", "model=tiny", "model.n_seq=512", "trainer.batch_size=8", "trainer.epochs=100",
                 "trainer.max_steps=400", "trainer.eval_every=100"],
}
WINDOWS = [(0, 50), (50, 100), (100, 200), (200, 300), (300, 400)]


def gradient_norms(overrides: list[str], steps: int) -> list[dict[str, float]]:
    """Per training step: the Koopman weight, the backbone's and the companions' gradient norms, and the clip."""
    trainer = trainer_for(overrides)
    companions = {id(p) for dyn in trainer.model.koopman_dynamics() for p in dyn.parameters()}
    clip = torch.nn.utils.clip_grad_norm_
    records: list[dict[str, float]] = []

    def norm(params) -> float:
        grads = [p.grad.norm() for p in params if p.grad is not None]
        return torch.linalg.vector_norm(torch.stack(grads)).item() if grads else 0.0

    def recording_clip(parameters, max_norm, **kwargs):
        parameters = list(parameters)
        records.append({
            "step": trainer.step, "weight": trainer.schedule.weight(trainer.progress()), "clip": max_norm,
            "backbone": norm(p for p in parameters if id(p) not in companions),
            "companions": norm(p for p in parameters if id(p) in companions),
        })
        return clip(parameters, max_norm, **kwargs)

    # The trainer calls torch.nn.utils.clip_grad_norm_ by attribute: swapping it records the norms the clip sees.
    torch.nn.utils.clip_grad_norm_ = recording_clip
    try:
        batches = itertools.chain.from_iterable(trainer.train_batches.epoch(e) for e in itertools.count())
        for _ in range(steps):
            trainer.train_step(*next(batches))
            trainer.step += 1
    finally:
        torch.nn.utils.clip_grad_norm_ = clip
    return records


def backbone_scale(r: dict[str, float]) -> float:
    """The factor by which the companions' gradients changed the backbone's clipped update on this step."""
    total = (r["backbone"] ** 2 + r["companions"] ** 2) ** 0.5
    return min(1.0, r["clip"] / total) / min(1.0, r["clip"] / r["backbone"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("setting", choices=sorted(SETTINGS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    records = {seed: gradient_norms([*SETTINGS[args.setting], f"seed={seed}"], args.steps) for seed in args.seeds}
    lines = [
        f"# Gradient-norm clip and Koopman learning: {args.setting}",
        "",
        f"`python experiments/baselines/clip_coupling.py {args.setting}` (Koopman on, kbk's defaults, "
        f"`{' '.join(SETTINGS[args.setting])}`, seeds {', '.join(map(str, args.seeds))}). Norms before the clip "
        "(`trainer.grad_clip`), medians over the steps of each window and the seeds.",
        "",
        "| steps | Koopman weight at the end | steps clipped | backbone gradient norm | companions' gradient norm "
        "| backbone update changed by the companions: median factor | smallest factor |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for low, high in WINDOWS:
        window = [r for rs in records.values() for r in rs if low <= r["step"] < high]
        if not window:
            continue
        scales = [backbone_scale(r) for r in window]
        clipped = sum((r["backbone"] ** 2 + r["companions"] ** 2) ** 0.5 > r["clip"] for r in window) / len(window)
        lines.append(
            f"| {low}–{high - 1} | {window[-1]['weight']:.3f} | {100 * clipped:.0f}% | "
            f"{statistics.median(r['backbone'] for r in window):.3f} | "
            f"{statistics.median(r['companions'] for r in window):.3f} | {statistics.median(scales):.3f} | "
            f"{min(scales):.3f} |")
    out = Path(__file__).with_name(args.setting) / "clip_coupling.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
