# Sourced by every experiments/<study>/run.sh (after it cd's to the repository root).
#   REPORT_ONLY=1 bash experiments/<study>/run.sh ...   rewrites the reports from the store without running or
#                                                        resuming any sweep (e.g. after kbk.report changed).
#   KBK_OUTPUTS=/path/to/outputs                         the store the sweeps write and the reports read.
# One torch thread per trial: on 2 shared cores, two threads per trial spent most of their time waiting for each
# other (a trial ran up to 30x slower than its one-thread CPU time), and two sweeps can then run side by side.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

sweep() {  # python -m kbk.run -m "$@", unless REPORT_ONLY is set
    if [ -z "${REPORT_ONLY:-}" ]; then
        python -m kbk.run -m "$@"
    fi
}

report_metrics() {  # the metrics a study reports on data $1: on synthetic data also the distance to the Bayes floor
    if [ "$1" = synthetic ]; then
        echo "val/ppl val/ppl_koopman val/loss_above_floor val/loss_koopman_above_floor"
    else
        echo "val/ppl val/ppl_koopman"
    fi
}

pick_dataset() {  # pick_dataset FIRST_ARGUMENT STUDY_FOLDER: `kjv` as a study script's first argument, else synthetic
    # Sets data; suffix (of the study names: none on synthetic data, the names the first studies took); where (for
    # the report's question); out (the report folder: STUDY_FOLDER, or STUDY_FOLDER/kjv); reproduce (the command).
    # The caller shifts its arguments when data=kjv.
    data=synthetic suffix="" where="synthetic data" out=$2 reproduce="bash $2/run.sh"
    if [ "$1" = kjv ]; then
        data=kjv suffix=_kjv where="the King James Bible" out=$2/kjv reproduce="bash $2/run.sh kjv"
    fi
}
