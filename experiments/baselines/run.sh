#!/usr/bin/env bash
# Study 5 of issue 13 (baselines): at the tiny preset's size (d_model 64, 2 layers) with n_seq 128, 400 steps
# (trainer.epochs=100 so that max_steps, not the 5 epochs of the 300k-token synthetic data, ends every run),
# seeds 0, 1, 2, one sweep per dataset (studies baselines_synthetic, baselines_kjv) over these variants
# (experiments/baselines/conf/experiment/):
#   bk               ResNet-BK, Koopman on (kbk's defaults)                     — the baseline of the report
#   bk_koopman_off   the same without any Koopman component
#   bk_noncausal     the seed's bidirectional BK-Core (model.causal=false), Koopman on (synthetic only: its
#                    exact Bayes floor is what proves the leak; experiments/causality_leak/ shows it on i.i.d. tokens)
#   gpt_d<w>         a 2-layer GPT whose parameter count matches the ResNet-BK with Koopman on / off
#                    (widths from experiments/baselines/widths.py: synthetic 148 / 72, kjv 88 / 64)
#   bash experiments/baselines/run.sh              # both datasets
#   bash experiments/baselines/run.sh synthetic    # one of them
# The kjv corpus must be prepared once: python experiments/data/kjv.py
# Re-running resumes each sweep (finished trials are kept) and rewrites the reports.
# The step time against context length (n_seq 128 / 512 / 2048) is a separate benchmark:
#   python experiments/benchmarks/context_length.py
set -euo pipefail
cd "$(dirname "$0")/../.."
source experiments/study.sh  # one torch thread per trial; REPORT_ONLY=1 rewrites the reports only
datasets=("${@:-synthetic kjv}")
declare -A variants=([synthetic]="bk,bk_koopman_off,bk_noncausal,gpt_d148,gpt_d72" [kjv]="bk,bk_koopman_off,gpt_d88,gpt_d64")
for data in ${datasets[@]}; do
    study=baselines_$data
    metrics="val/ppl perf/step_ms"
    noncausal=""
    if [ "$data" = synthetic ]; then
        metrics="val/ppl val/loss_above_floor perf/step_ms"
        noncausal=" with the seed's non-causal BK-Core,"
    fi
    sweep hparams_search=baselines_grid "hydra.searchpath=[file://experiments/baselines/conf]" \
        hydra.sweeper.study_name=$study experiment=${variants[$data]} seed=0,1,2 \
        data=$data model=tiny model.n_seq=128 trainer.epochs=100 trainer.max_steps=400 trainer.eval_every=100
    group_by="model.arch model.d_model koopman.enabled model.causal"
    baseline=model.arch=resnet_bk,model.d_model=64,koopman.enabled=true,model.causal=true
    python -m kbk.report --sweep $study --group-by $group_by --baseline $baseline --metric $metrics \
        --question "At n_seq 128 and 400 steps on data=$data, how do the tiny ResNet-BK with Koopman on (kbk's default), without Koopman,${noncausal} and a 2-layer GPT matched in parameters to the ResNet-BK with Koopman on or off compare in validation perplexity and step time?" \
        --reproduce "bash experiments/baselines/run.sh $data" --out experiments/baselines/$data
    python -m kbk.compare --sweep $study --group-by $group_by --metric $metrics --baseline $baseline
done
