#!/usr/bin/env bash
# The whole device side of one GPU shift, in one call (see experiments/shifts.py):
#   bash experiments/gpu_shift.sh OUT_DIR [extra `python -m experiments shift` options]
# 1. installs the carried wheels (.whl/: mlflow, optuna and their dependencies) if present;
# 2. extracts only the data the next pending shift needs from .data/ into $DATA_ROOT
#    (default /tmp/data), which becomes --data-dir;
# 3. runs `python -m experiments shift --out OUT_DIR` (shakedown, bench if asked, the shift's
#    runs with a deadline; after each run OUT_DIR/shift.tgz: ledger part and store, and
#    checkpoint.tgz of a stopped run), with its log teed, unbuffered, into OUT_DIR/shift.log;
#    with .shift/shift.tgz carried (an earlier lease's), its runs are skipped or resumed.
# Back on your machine: python -m analysis add-part OUT_DIR/shift.tgz && make tables
# CPU dry run (a test does this): bash experiments/gpu_shift.sh /tmp/out --profile smoke
set -uo pipefail
out=${1:?usage: gpu_shift.sh OUT_DIR [shift options]}; shift
mkdir -p "$out"
py=${PYTHON:-python3}
export MLFLOW_DISABLE_TELEMETRY=true GIT_PYTHON_REFRESH=quiet PYTHONUNBUFFERED=1
{
  echo "=== gpu-shift $(date -u +%FT%TZ) on $(hostname)"
  if compgen -G ".whl/*.whl" > /dev/null; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || exit 3
    export PYTHONPATH="/tmp/site:$PWD"
  fi
  data_root=${DATA_ROOT:-/tmp/data}
  mkdir -p "$data_root"
  for item in $("$py" -m experiments shifts --next-data); do
    if [ -e "$data_root/${item%%.tar.xz}" ]; then continue; fi
    if [ -f ".data/$item" ]; then tar -xJf ".data/$item" -C "$data_root"
    elif [ -d ".data/$item" ]; then cp -r ".data/$item" "$data_root/"
    else echo "note: .data/$item not carried; runs that need it will say so"; fi
  done
  resume=()  # an earlier lease's archives, carried back in .shift/: its stopped run resumes
  carried=${SHIFT_CARRY:-.shift}
  if [ -f "$carried/shift.tgz" ]; then resume=(--resume "$carried/shift.tgz"); fi
  "$py" -m experiments shift --out "$out" --data-dir "$data_root" "${resume[@]}" "$@"
  rc=$?
  echo "=== rc $rc $(date -u +%FT%TZ)"
  exit "$rc"
} 2>&1 | tee -a "$out/shift.log"
exit "${PIPESTATUS[0]}"
