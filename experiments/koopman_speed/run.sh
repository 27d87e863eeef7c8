#!/usr/bin/env bash
# What the cheap-Koopman settings cost in quality (issue 11), two studies at model=tiny (koopman_dim 256), 400 steps,
# seeds 0, 1, 2, each reported against kbk's defaults (256 tokens, the terms and the DMD solve on every step):
# - koopman_speed: koopman.sample_tokens 128 / 256 × dmd.update_interval 1 / 4 (preset koopman_speed_grid), into
#   experiments/koopman_speed/<dataset>/;
# - koopman_terms_interval: koopman.terms_interval 1 / 2 × dmd.update_interval 1 / 4 (preset
#   koopman_terms_interval_grid), into experiments/koopman_speed/<dataset>/terms_interval/.
# Their step times, measured side by side: experiments/benchmarks/trial_cost_results.md.
#   bash experiments/koopman_speed/run.sh              # synthetic data (~7 min a study on 2 quiet CPU cores)
#   bash experiments/koopman_speed/run.sh kjv          # the King James Bible (python experiments/data/kjv.py first;
#                                                      # 19 min a study with two sweeper processes on it)
# Re-running resumes the sweep (finished trials are kept) and rewrites the report.
set -euo pipefail
cd "$(dirname "$0")/../.."
source experiments/study.sh  # one torch thread per trial; REPORT_ONLY=1 rewrites the reports only
datasets=("${@:-synthetic}")
for data in ${datasets[@]}; do
    study=koopman_speed_$data
    metrics="$(report_metrics $data) koopman/0/one_step_rel_err koopman/1/one_step_rel_err"
    baseline=koopman.sample_tokens=256,dmd.update_interval=1
    sweep hparams_search=koopman_speed_grid hydra.sweeper.study_name=$study seed=0,1,2 data=$data model=tiny \
        trainer.max_steps=400 trainer.eval_every=100
    python -m kbk.report --sweep $study --baseline $baseline --metric $metrics \
        --question "Do the settings that make Koopman learning cheaper (128 instead of 256 sampled tokens per step for the Koopman terms; the DMD solve on every 4th step instead of every step) change the Koopman-mode validation perplexity or the one-step error of the tiny model (koopman_dim 256) after 400 steps on data=$data?" \
        --reproduce "bash experiments/koopman_speed/run.sh $data" --out experiments/koopman_speed/$data
    python -m kbk.compare --sweep $study --metric $metrics --baseline $baseline

    study=koopman_terms_interval_$data
    baseline=koopman.terms_interval=1,dmd.update_interval=1
    sweep hparams_search=koopman_terms_interval_grid hydra.sweeper.study_name=$study seed=0,1,2 data=$data \
        model=tiny trainer.max_steps=400 trainer.eval_every=100
    python -m kbk.report --sweep $study --baseline $baseline --metric $metrics \
        --question "Does computing the Koopman terms on every 2nd step only (the steps between only feed DMD its pairs), alone or with the DMD solve on every 4th step, change the Koopman-mode validation perplexity or the one-step error of the tiny model (koopman_dim 256) after 400 steps on data=$data?" \
        --reproduce "bash experiments/koopman_speed/run.sh $data" --out experiments/koopman_speed/$data/terms_interval
    python -m kbk.compare --sweep $study --metric $metrics --baseline $baseline
done
