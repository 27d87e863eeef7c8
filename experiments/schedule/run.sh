#!/usr/bin/env bash
# Study 2 of issue 13: which Koopman loss-weight schedule works best. Two sweeps at the tiny preset (400 steps
# each, seeds 0, 1, 2) on the synthetic data or on the King James Bible, each with its report:
#   type_detach: schedule.type linear / exponential / step / constant × koopman.detach_backbone true / false
#                (24 trials) against the defaults (linear, detach true)          → experiments/schedule/README.md
#   max_weight:  schedule.max_weight 0.03 / 0.1 / 0.3 at the default type (9 trials) against the default 0.1
#                                                                                → experiments/schedule/max_weight/
#   bash experiments/schedule/run.sh                  # both parts, synthetic data
#   bash experiments/schedule/run.sh max_weight       # one part
#   bash experiments/schedule/run.sh kjv [PART]       # on the King James Bible (python experiments/data/kjv.py
#                                                     # first): studies *_kjv, reports in experiments/schedule/kjv/
# About 4 min a trial on 2 CPU cores shared with other sweeps (1 to 2 min on a quiet machine). Re-running it
# resumes the sweeps (finished trials are kept) and rewrites the reports.
set -euo pipefail
cd "$(dirname "$0")/../.."
source experiments/study.sh  # one torch thread per trial; REPORT_ONLY=1 rewrites the reports only
pick_dataset "${1:-}" experiments/schedule
if [ $data = kjv ]; then shift; fi
size=(model=tiny data=$data trainer.max_steps=400 trainer.eval_every=100 seed=0,1,2)
metrics=($(report_metrics $data) koopman/0/one_step_rel_err koopman/1/one_step_rel_err)
parts=("${@:-type_detach max_weight}")

for part in ${parts[@]}; do
  case $part in
    type_detach)
      study=schedule_detach$suffix baseline=schedule.type=linear,koopman.detach_backbone=true
      sweep hparams_search=schedule_detach_grid hydra.sweeper.study_name=$study "${size[@]}"
      python -m kbk.report --sweep $study --baseline $baseline --metric "${metrics[@]}" \
          --question "Which Koopman loss-weight schedule type (linear, exponential, step, constant), with the backbone detached from the Koopman loss or not, gives the lowest standard and Koopman-mode validation perplexity and one-step error of the tiny model after 400 steps on $where?" \
          --reproduce "$reproduce type_detach" --out $out ;;
    max_weight)
      study=schedule_max_weight$suffix baseline=schedule.max_weight=0.1
      sweep hparams_search=schedule_max_weight_grid hydra.sweeper.study_name=$study "${size[@]}"
      python -m kbk.report --sweep $study --baseline $baseline --metric "${metrics[@]}" \
          --question "Does the Koopman loss weight the linear schedule reaches (0.03, 0.1, 0.3) change the standard or Koopman-mode validation perplexity or the one-step error of the tiny model after 400 steps on $where?" \
          --reproduce "$reproduce max_weight" --out $out/max_weight ;;
    *) echo "run.sh: unknown part '$part'; the parts are type_detach and max_weight" >&2; exit 2 ;;
  esac
  python -m kbk.compare --sweep $study --metric "${metrics[@]}" --baseline $baseline
done
