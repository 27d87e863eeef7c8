#!/usr/bin/env bash
# Study 1 of issue 13: does koopman_dim matter? koopman.dim 16 / 64 / 256 / 1024 (below, at and far above the tiny
# model's d_model 64) × seeds 0, 1, 2 at model=tiny, 400 steps, on the synthetic data (exact Bayes floor) and on the
# King James Bible (word vocabulary 8,002): one sweep per dataset (studies koopman_dim_synthetic, koopman_dim_kjv),
# each reported against koopman.dim=64 (= d_model) into experiments/koopman_dim/<dataset>/.
#   bash experiments/koopman_dim/run.sh              # both datasets (~45 min on 2 loaded CPU cores)
#   bash experiments/koopman_dim/run.sh synthetic    # one of them
# The kjv corpus must be prepared once: python experiments/data/kjv.py
# Re-running resumes each sweep (finished trials are kept) and rewrites the reports.
set -euo pipefail
cd "$(dirname "$0")/../.."
source experiments/study.sh  # one torch thread per trial; REPORT_ONLY=1 rewrites the reports only
# No step time in the report: a trial's perf/step_ms measures the machine's load as much as koopman_dim (these
# trials ran beside other sweeps), so the cost is measured side by side by layer_cost.py instead.
datasets=("${@:-synthetic kjv}")
for data in ${datasets[@]}; do
    study=koopman_dim_$data
    metrics=$(report_metrics $data)
    # trainer.keep_checkpoint=last: experiments/koopman_mode_gap/gap.py evaluates these trials' final checkpoints.
    sweep hparams_search=koopman_dim_grid hydra.sweeper.study_name=$study trainer.keep_checkpoint=last \
        koopman.dim=16,64,256,1024 seed=0,1,2 data=$data model=tiny trainer.max_steps=400 trainer.eval_every=100
    python -m kbk.report --sweep $study --baseline koopman.dim=64 --metric $metrics \
        --question "Does koopman_dim (16, 64 = d_model, 256, 1024) change the standard or the Koopman-mode validation perplexity, the per-layer Koopman-only vs skip-only perplexity, or the one-step error of the tiny model after 400 steps on data=$data?" \
        --reproduce "bash experiments/koopman_dim/run.sh $data" --out experiments/koopman_dim/$data
    python -m kbk.compare --sweep $study --metric $metrics --baseline koopman.dim=256
done
