#!/usr/bin/env bash
# Stop what tests/slurm/up.sh started: cancel every job, wait for an empty queue (else slurmstepd
# retries and slurmd ignores SIGTERM), then end the daemons by the PIDs up.sh recorded.
set -uo pipefail
DIR=${1:-${CONVNETS_SLURM_DIR:-/tmp/convnets-slurm}}
[ -f "$DIR/pids" ] || exit 0
export SLURM_CONF=$DIR/slurm.conf
if [ -f "$SLURM_CONF" ] && command -v scancel >/dev/null; then
  scancel --full --user "$(id -un)" 2>/dev/null || true
  for _ in $(seq 60); do
    [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
    sleep 0.5
  done
fi
# slurmd first, then the controller, then munged (if up.sh started it)
for name in slurmd slurmctld munged; do
  pid=$(awk -v n="$name" '$1 == n {print $2}' "$DIR/pids")
  [ -n "$pid" ] || continue
  kill "$pid" 2>/dev/null || continue
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
done
rm -f "$DIR/pids"
