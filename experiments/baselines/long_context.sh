#!/usr/bin/env bash
# Study 5 of issue 13, longer context: the baselines study's variants on the King James Bible at n_seq 512 with
# batch size 8 (4,096 tokens per step, as the n_seq 128 runs of run.sh), 400 steps, seeds 0, 1, 2 (study
# baselines_kjv_n512): ResNet-BK with Koopman on (the report's baseline) and off, and the 2-layer GPTs matched to
# them (widths 88 / 64 at n_seq 512 too: python experiments/baselines/widths.py). Quality at equal steps and
# equal training seconds (wall_time.py); the step time side by side is experiments/benchmarks/context_length_results.md.
#   bash experiments/baselines/long_context.sh
# The kjv corpus must be prepared once: python experiments/data/kjv.py
# Re-running resumes the sweep (finished trials are kept) and rewrites the report.
set -euo pipefail
cd "$(dirname "$0")/../.."
source experiments/study.sh  # one torch thread per trial; REPORT_ONLY=1 rewrites the reports only
study=baselines_kjv_n512
metrics="val/ppl perf/step_ms"
sweep hparams_search=baselines_grid "hydra.searchpath=[file://experiments/baselines/conf]" \
    hydra.sweeper.study_name=$study experiment=bk,bk_koopman_off,gpt_d88,gpt_d64 seed=0,1,2 \
    data=kjv model=tiny model.n_seq=512 trainer.batch_size=8 trainer.epochs=100 trainer.max_steps=400 \
    trainer.eval_every=100
group_by="model.arch model.d_model koopman.enabled model.causal"
baseline=model.arch=resnet_bk,model.d_model=64,koopman.enabled=true,model.causal=true
python -m kbk.report --sweep $study --group-by $group_by --baseline $baseline --metric $metrics \
    --question "At n_seq 512 (batch 8, 4,096 tokens per step) and 400 steps on the King James Bible, how do the tiny ResNet-BK with Koopman on (kbk's default) and off and 2-layer GPTs matched to them in parameters compare in validation perplexity?" \
    --reproduce "bash experiments/baselines/long_context.sh" --out experiments/baselines/kjv_n512
python -m kbk.compare --sweep $study --group-by $group_by --metric $metrics --baseline $baseline
python experiments/baselines/wall_time.py kjv_n512  # quality against training seconds

# The Koopman on/off difference again, with the companions on a random stream of their own (koopman.own_rng): at
# each seed Koopman on and off then share the backbone's initial weights and dropout masks, and with the Koopman
# terms detached nothing else reaches the backbone (experiments/baselines/clip_coupling.py).
study=baselines_kjv_n512_own_rng
baseline=koopman.enabled=true
sweep hparams_search=baselines_grid "hydra.searchpath=[file://experiments/baselines/conf]" \
    hydra.sweeper.study_name=$study experiment=bk,bk_koopman_off seed=0,1,2 koopman.own_rng=true \
    data=kjv model=tiny model.n_seq=512 trainer.batch_size=8 trainer.epochs=100 trainer.max_steps=400 \
    trainer.eval_every=100
python -m kbk.report --sweep $study --group-by koopman.enabled --baseline $baseline --metric val/ppl \
    --question "At n_seq 512 (batch 8) and 400 steps on the King James Bible, with the Koopman companions on a random stream of their own (koopman.own_rng=true), does Koopman learning (detached from the backbone) change the tiny ResNet-BK's validation perplexity?" \
    --reproduce "bash experiments/baselines/long_context.sh" --out experiments/baselines/kjv_n512/own_rng
