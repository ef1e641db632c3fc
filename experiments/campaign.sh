#!/usr/bin/env bash
# Run claim specs into a fresh MLflow store and leave a snapshot + the packed store in OUT_DIR.
# Meant for a lent GPU machine (one long call), and runnable anywhere with PROFILE=smoke.
#
#   bash experiments/campaign.sh OUT_DIR PROFILE DATASET SPEC [SPEC ...]
#   e.g. bash experiments/campaign.sh "$OUT" quick imagefolder:/tmp/data/cifar10-jpeg-q75 degradation nin-heads
#
# DATASET "-" keeps each spec's own dataset (e.g. seed-claims); extra runner flags go in
# RUN_FLAGS (e.g. RUN_FLAGS="--parallel 4 --seeds 5"); DATA_DIR is passed as --data-dir.
# OUT_DIR receives: campaign.log (appended by the caller's tee), snapshot/{runs.csv,curves.csv,
# predictions.npz} and store.tgz (mlflow.db + artifacts), so the tables can be rebuilt with
# `python -m analysis tables --source snapshot --snapshot OUT_DIR/snapshot`.
set -uo pipefail
if [ $# -lt 4 ]; then
  sed -n '2,12p' "$0" >&2
  exit 2
fi
out=$1; profile=$2; dataset=$3; shift 3
py=${PYTHON:-python3}
store=${CAMPAIGN_STORE:-/tmp/convnets-campaign}
mkdir -p "$out" "$store"
export MLFLOW_TRACKING_URI="sqlite:///$store/mlflow.db"
export CONVNETS_ARTIFACTS="file://$store/artifacts"
export CONVNETS_CHECKPOINTS="$store/checkpoints"
export MLFLOW_DISABLE_TELEMETRY=true GIT_PYTHON_REFRESH=quiet PYTHONUNBUFFERED=1
status=0
for spec in "$@"; do
  echo "=== $spec ($profile) $(date -u +%H:%M:%S)"
  args=(run "$spec" --profile "$profile")
  [ "$dataset" != "-" ] && args+=(--dataset "$dataset")
  [ -n "${DATA_DIR:-}" ] && args+=(--data-dir "$DATA_DIR")
  # shellcheck disable=SC2206
  [ -n "${RUN_FLAGS:-}" ] && args+=(${RUN_FLAGS})
  "$py" -m experiments "${args[@]}" || status=$?
done
echo "=== export $(date -u +%H:%M:%S)"
"$py" -m analysis export --out "$out/snapshot" || status=$?
tar -czf "$out/store.tgz" -C "$store" mlflow.db artifacts || status=$?
ls -la "$out" "$out/snapshot"
exit $status
