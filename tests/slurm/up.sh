#!/usr/bin/env bash
# A single-node Slurm for the `slurm`-marked tests: Debian's packages, munge, and a slurm.conf of
# the tests' own in a temporary folder (the machine's /etc/slurm is never written). Runs as root
# without systemd. Usage: tests/slurm/up.sh [DIR]  (default /tmp/convnets-slurm).
# Writes DIR/slurm.conf, DIR/env (`export SLURM_CONF=...`) and DIR/pids (what it started, for
# down.sh). Exit 0 with the node idle; exit 3 if Slurm cannot be installed or started (the tests
# then skip and say why). CONVNETS_SLURM_NICE=N starts the daemons (and so every task) at nice N.
set -euo pipefail
DIR=${1:-${CONVNETS_SLURM_DIR:-/tmp/convnets-slurm}}
NICE=${CONVNETS_SLURM_NICE:-0}
say() { echo "slurm up: $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then say "needs root (slurmd runs tasks as their user)"; exit 3; fi
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
   || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
  say "installing slurmctld slurmd slurm-client munge"
  { env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
      && env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
           slurmctld slurmd slurm-client munge >/dev/null; } || { say "apt-get failed"; exit 3; }
fi

# already up (an earlier call with the same DIR): reuse it
if [ -f "$DIR/pids" ] && [ -f "$DIR/slurm.conf" ] \
   && SLURM_CONF=$DIR/slurm.conf sinfo -h -o %T 2>/dev/null | grep -qE 'idle|mix|alloc'; then
  say "already running (SLURM_CONF=$DIR/slurm.conf)"; exit 0
fi
mkdir -p "$DIR/state" "$DIR/spool"
: > "$DIR/pids"

# munge: one per machine, on its default socket; started only if none runs
if ! pgrep -x munged >/dev/null; then
  [ -s /etc/munge/munge.key ] || mungekey --create
  chown munge:munge /etc/munge/munge.key && chmod 600 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge && chown munge:munge /run/munge /var/log/munge /var/lib/munge
  nice -n "$NICE" runuser -u munge -- munged
  for _ in $(seq 50); do [ -s /run/munge/munged.pid ] && break; sleep 0.1; done
  echo "munged $(cat /run/munge/munged.pid)" >> "$DIR/pids"
fi

HOST=$(hostname -s)
NODE=$(slurmd -C | head -1)
cat > "$DIR/slurm.conf" <<CONF
# written by tests/slurm/up.sh for the test suite; not a production configuration
ClusterName=convnets-test
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# short credential life and a scheduler every second: a requeue takes ~15 s, not ~2 min
AuthInfo=cred_expire=10
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
KillWait=5
MinJobAge=600
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
$NODE State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
echo "export SLURM_CONF=$DIR/slurm.conf" > "$DIR/env"
export SLURM_CONF=$DIR/slurm.conf

# -i: ignore a state folder of an earlier run of this script; daemons fork and write PID files
nice -n "$NICE" slurmctld -i -f "$SLURM_CONF"
for _ in $(seq 50); do [ -s "$DIR/slurmctld.pid" ] && break; sleep 0.1; done
echo "slurmctld $(cat "$DIR/slurmctld.pid")" >> "$DIR/pids"
nice -n "$NICE" slurmd -f "$SLURM_CONF"
for _ in $(seq 50); do [ -s "$DIR/slurmd.pid" ] && break; sleep 0.1; done
echo "slurmd $(cat "$DIR/slurmd.pid")" >> "$DIR/pids"

for _ in $(seq 60); do
  if sinfo -h -o %T 2>/dev/null | grep -qx idle; then
    say "node $HOST idle (SLURM_CONF=$SLURM_CONF)"; exit 0
  fi
  sleep 0.5
done
say "the node did not become idle in 30 s; see $DIR/slurmctld.log and $DIR/slurmd.log"
exit 3
