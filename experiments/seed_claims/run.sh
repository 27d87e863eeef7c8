#!/usr/bin/env bash
# Study 6 of issue 13: the seed's claims, checked against the seed itself. The seed's Colab run
# (experiment=seed_colab: non-causal BK-Core with its heuristic backward, unscaled top-1 MoE, Huber auxiliary loss,
# Koopman from epoch 3 of 5) and kbk's defaults at the same size (model=small: d_model 64, 4 layers, n_seq 128),
# each with Koopman on and off (experiments/seed_claims/conf/experiment/), seeds 0, 1, 2, 5 epochs, on the same data:
#   bash experiments/seed_claims/run.sh              # both datasets
#   bash experiments/seed_claims/run.sh synthetic    # one of them
# On synthetic data (300,000 tokens: 73 steps an epoch, 365 steps) the exact Bayes floor shows what the
# non-causal model's lower perplexity is worth. The kjv corpus must be prepared once: python experiments/data/kjv.py
# Each claim of the seed's report is answered in experiments/seed_claims/FINDINGS.md from this study's reports
# (experiments/seed_claims/<dataset>/) and the other studies'. Re-running resumes each sweep (finished trials are
# kept) and rewrites the reports.
set -euo pipefail
cd "$(dirname "$0")/../.."
source experiments/study.sh  # one torch thread per trial; REPORT_ONLY=1 rewrites the reports only
datasets=("${@:-synthetic kjv}")
for data in ${datasets[@]}; do
    study=seed_claims_$data
    metrics=$(report_metrics $data)
    sweep hparams_search=seed_claims_grid "hydra.searchpath=[file://experiments/seed_claims/conf]" \
        hydra.sweeper.study_name=$study seed=0,1,2 data=$data
    group_by="model.causal koopman.enabled"
    baseline=model.causal=false,koopman.enabled=false
    python -m kbk.report --sweep $study --group-by $group_by --baseline $baseline --metric $metrics \
        --question "On data=$data, 5 epochs at the seed's size: does Koopman learning improve the seed's own Colab run (non-causal, seed_colab) or kbk's defaults (causal), how far is whole-stack Koopman mode from the standard model, does DMD write the operators, and where do the seed's and kbk's models stand against each other?" \
        --reproduce "bash experiments/seed_claims/run.sh $data" --out experiments/seed_claims/$data
    python -m kbk.compare --sweep $study --group-by $group_by --metric $metrics \
        --baseline model.causal=true,koopman.enabled=false
done
