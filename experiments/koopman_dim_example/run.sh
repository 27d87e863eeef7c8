#!/usr/bin/env bash
# The README's example study: koopman_dim 128 / 256 / 512 × seeds 0, 1, 2 at the tiny preset on the synthetic
# data (400 steps each), compared against koopman_dim 256 and reported into this folder.
#   bash experiments/koopman_dim_example/run.sh            # about 10 min on 2 CPU cores
# Re-running it resumes the sweep (finished trials are kept) and rewrites the report.
set -euo pipefail
cd "$(dirname "$0")/../.."
study=koopman_dim_example
python -m kbk.run -m hparams_search=koopman_dim_grid hydra.sweeper.study_name=$study seed=0,1,2 \
    model=tiny trainer.max_steps=400 trainer.eval_every=100
python -m kbk.report --sweep $study --baseline koopman.dim=256 --metric val/ppl val/ppl_koopman \
    --question "Does koopman_dim (128, 256, 512) change the standard or the Koopman-mode validation perplexity of the tiny model after 400 steps?" \
    --reproduce "bash experiments/koopman_dim_example/run.sh" --out experiments/koopman_dim_example
python -m kbk.compare --sweep $study --metric val/ppl val/ppl_koopman --baseline koopman.dim=256
