#!/usr/bin/env bash
# Study 3 of issue 13: which DMD buffer size and which owner of the Koopman operator work best, at the tiny preset
# on the synthetic data or the King James Bible (400 steps each, seeds 0, 1, 2): koopman.operator_update gradient / dmd / both (the preset
# dmd_ownership_grid) × dmd.buffer_size, in two sweeps so that the extreme buffers come first:
#   extremes: buffers 20 and 2000 (18 trials) against buffer 2000, both    → experiments/dmd/extremes/README.md
#   middle:   buffers 100 and 500 (18 trials) against the defaults (100, both) → experiments/dmd/middle/README.md
#   bash experiments/dmd/run.sh                  # both parts, then the whole grid in one report
#                                                #   (all four buffers against the defaults) → experiments/dmd/README.md
#   bash experiments/dmd/run.sh middle           # one part
#   bash experiments/dmd/run.sh kjv [PART]       # on the King James Bible (python experiments/data/kjv.py first):
#                                                #   studies *_kjv, reports in experiments/dmd/kjv/
# The reports' per-layer tables hold the DMD acceptance (dmd_accept_rate) and the drift of K (drift_rel). About 4
# min a trial on 2 CPU cores shared with other sweeps. Re-running it resumes the sweeps (finished trials are
# kept) and rewrites the reports.
set -euo pipefail
cd "$(dirname "$0")/../.."
source experiments/study.sh  # one torch thread per trial; REPORT_ONLY=1 rewrites the reports only
pick_dataset "${1:-}" experiments/dmd
if [ $data = kjv ]; then shift; fi
size=(model=tiny data=$data trainer.max_steps=400 trainer.eval_every=100 seed=0,1,2)
metrics=($(report_metrics $data) koopman/0/one_step_rel_err koopman/1/one_step_rel_err
         koopman/0/drift_rel koopman/1/drift_rel)
parts=("${@:-extremes middle}")
whole=$([ $# -eq 0 ] && echo yes || echo no)  # both parts asked for: the combined report too

for part in ${parts[@]}; do
  case $part in
    extremes) buffers=20,2000 baseline=dmd.buffer_size=2000,koopman.operator_update=both ;;
    middle)   buffers=100,500 baseline=dmd.buffer_size=100,koopman.operator_update=both ;;
    *) echo "run.sh: unknown part '$part'; the parts are extremes and middle" >&2; exit 2 ;;
  esac
  study=dmd_ownership_$part$suffix
  sweep hparams_search=dmd_ownership_grid hydra.sweeper.study_name=$study \
      dmd.buffer_size=$buffers "${size[@]}"
  python -m kbk.report --sweep $study --baseline $baseline --metric "${metrics[@]}" \
      --question "Which DMD buffer size ($buffers) and which owner of the Koopman operator (gradient, DMD, both) give the lowest Koopman-mode validation perplexity and one-step error of the tiny model after 400 steps on $where, how often does DMD accept its estimate and how far does K drift?" \
      --reproduce "$reproduce $part" --out $out/$part
  python -m kbk.compare --sweep $study --metric "${metrics[@]}" --baseline $baseline
done
if [ "$whole" = yes ]; then
  python -m kbk.report --sweep dmd_ownership_extremes$suffix dmd_ownership_middle$suffix \
      --baseline dmd.buffer_size=100,koopman.operator_update=both --metric "${metrics[@]}" \
      --question "Which DMD buffer size (20, 100, 500, 2000) and which owner of the Koopman operator (gradient, DMD, both) give the lowest standard and Koopman-mode validation perplexity and one-step error of the tiny model after 400 steps on $where, how often does DMD accept its estimate and how far does K drift? (Both parts of the grid, against kbk's defaults.)" \
      --reproduce "$reproduce" --out $out
fi
