#!/usr/bin/env bash
# Reproduces docs/EVALUATION.md: writes the data sets, runs every setting with `dist-al simulate`, then
# `dist-al evaluate` draws the figures and tables into docs/ (the image settings': docs/images/).  From a clean clone:
#   pip install -e '.[eval]' && scripts/evaluate.sh
# Environment: PARALLEL=N settings at a time (default 1); ONLY=REGEX runs only the matching settings
# (e.g. ONLY='^digits-'); SKIP_DATA=1 keeps the data sets written before; DATA, RUNS, OUT change the directories (default ./eval-data, ./eval-runs, docs).
# A setting whose run.json matches is skipped by simulate, so an interrupted run resumes where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
DATA="${DATA:-./eval-data}" RUNS="${RUNS:-./eval-runs}" OUT="${OUT:-docs}" PARALLEL="${PARALLEL:-1}"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1   # one torch thread per process: settings run side by side

# name                    config                          budget rounds warm_start (longest first)
SETTINGS="
digits-images-scratch-b10 configs/eval-digits-images.yaml 10  5   false
digits-scratch-b10     configs/eval-digits.yaml    10  24  false
digits-warm-b10        configs/eval-digits.yaml    10  24  true
synthetic-scratch-b40  configs/eval-synthetic.yaml 40  5   false
synthetic-scratch-b200 configs/eval-synthetic.yaml 200 2   false
weather-scratch-b10    configs/eval-weather.yaml   10  14  false
weather-warm-b10       configs/eval-weather.yaml   10  14  true
digits-scratch-b60     configs/eval-digits.yaml    60  4   false
digits-warm-b60        configs/eval-digits.yaml    60  4   true
digits-images-scratch-b40 configs/eval-digits-images.yaml 40  2   false
weather-scratch-b50    configs/eval-weather.yaml   50  3   false
weather-warm-b50       configs/eval-weather.yaml   50  3   true
"

# SKIP_DATA=1: keep the data sets already under $DATA (other settings may be reading them right now)
[ -n "${SKIP_DATA:-}" ] || "$PY" -m dist_al.experiments.datasets "$DATA" --synthetic-rows 20000

run_setting() {  # name config budget rounds warm
  "$PY" -m dist_al.cli simulate --config "$2" --no-progress \
    --set pool.uri="$DATA/$(basename "$2" .yaml | sed 's/^eval-//')/pool" \
    --set eval.uri="$DATA/$(basename "$2" .yaml | sed 's/^eval-//')/test" \
    --set selection.budget="$3" --set simulation.rounds="$4" --set train.warm_start="$5" \
    --set workdir="$RUNS/$1" > "$RUNS/$1.log" 2>&1 && echo "done: $1" || { echo "FAILED: $1 (see $RUNS/$1.log)"; return 1; }
}
export -f run_setting
export PY DATA RUNS
mkdir -p "$RUNS"
echo "$SETTINGS" | grep -v '^\s*$' | grep -E "${ONLY:-.}" \
  | xargs -P "$PARALLEL" -L 1 bash -c 'run_setting "$@"' _

report() {  # out settings: `dist-al evaluate` over those settings' runs, when there are any
  [ -n "$2" ] || return 0
  # shellcheck disable=SC2046
  "$PY" -m dist_al.cli evaluate $(echo "$2" | awk -v r="$RUNS" '{print r "/" $1}') --out "$1"
}
chosen=$(echo "$SETTINGS" | grep -v '^\s*$' | grep -E "${ONLY:-.}")
# The image settings run 4 of the 8 strategies and a penalty matrix covers only the strategies that every one of
# its settings ran, so they get their own figures and tables, in $OUT/images.
report "$OUT" "$(echo "$chosen" | grep -v eval-digits-images.yaml || true)"
report "$OUT/images" "$(echo "$chosen" | grep eval-digits-images.yaml || true)"
