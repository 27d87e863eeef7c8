#!/usr/bin/env bash
# Study 4 of issue 13: the Koopman-mode gap. Standard vs whole-stack Koopman mode vs skipping every layer vs each
# layer alone, and how the gap evolves with training length.
#   bash experiments/koopman_mode_gap/run.sh              # both datasets (~1 h 30 min on 2 loaded CPU cores)
#   bash experiments/koopman_mode_gap/run.sh synthetic    # one of them
# 1. The gap at 400 steps for every koopman_dim of the koopman_dim study (run experiments/koopman_dim/run.sh
#    first; skipped with a note where that sweep has no finished trial): gap.py over its trials.
# 2. One longer sweep per dataset: koopman.dim=256 (the default) × seeds 0, 1, 2 at model=tiny, 1600 steps,
#    evaluated every 200 (study koopman_mode_gap_long_<dataset>), reported by kbk.report and by gap.py.
#    trainer.epochs=100 so that max_steps ends every run (5 epochs of the synthetic data are only 730 steps: the
#    first version of this sweep, koopman_mode_gap_<dataset>, stopped there).
# gap.py reads the MLflow store and the trials' final checkpoints (for "skip every layer", which the trainer does
# not log): the sweeps keep them (trainer.keep_checkpoint=last; kbk's sweep trials drop theirs by default).
# The kjv corpus must be prepared once: python experiments/data/kjv.py
# Re-running resumes the sweeps (finished trials are kept) and rewrites the reports.
set -euo pipefail
cd "$(dirname "$0")/../.."
source experiments/study.sh  # one torch thread per trial; REPORT_ONLY=1 rewrites the reports only
here=experiments/koopman_mode_gap
datasets=("${@:-synthetic kjv}")
for data in ${datasets[@]}; do
    python $here/gap.py --sweep koopman_dim_$data --group-by koopman.dim --out $here/koopman_dim_$data \
        --command "bash $here/run.sh $data" \
        || echo "gap.py: no koopman_dim_$data report (run experiments/koopman_dim/run.sh $data first)"
done
for data in ${datasets[@]}; do
    study=koopman_mode_gap_long_$data
    metrics=$(report_metrics $data)
    sweep hparams_search=koopman_dim_grid hydra.sweeper.study_name=$study trainer.keep_checkpoint=last \
        koopman.dim=256 seed=0,1,2 data=$data model=tiny trainer.epochs=100 trainer.max_steps=1600 \
        trainer.eval_every=200
    python -m kbk.report --sweep $study --metric $metrics \
        --question "How does the Koopman-mode gap (val/ppl_koopman against val/ppl, each layer alone against skipping it) of the tiny model with koopman_dim 256 evolve over 1600 steps on data=$data?" \
        --reproduce "bash $here/run.sh $data" --out $here/$data
    python $here/gap.py --sweep $study --out $here/$data/gap --command "bash $here/run.sh $data"
done
