#!/usr/bin/env bash
# A one-machine SLURM for the tests of `ablate --slurm`: munged, slurmctld and slurmd from Debian's packages, run as
# root in the background with a configuration of their own (no systemd, no cgroups: proctrack/linuxproc, task/none)
# under $AUDIO_MRKD_SLURM_DIR (default /tmp/audio-mrkd-slurm), on ports of their own, so a SLURM the machine may
# already run is left alone. Clients reach it with SLURM_CONF=$AUDIO_MRKD_SLURM_DIR/slurm.conf. Does nothing when
# that SLURM already answers; exits non-zero, with one line saying why, when it cannot be brought up.
set -euo pipefail
DIR="${AUDIO_MRKD_SLURM_DIR:-/tmp/audio-mrkd-slurm}"
export SLURM_CONF="$DIR/slurm.conf"
say() { echo "slurm_up: $*" >&2; }

# the controller is up, this machine's slurmd answers, and its node can take jobs
answers() {
    scontrol ping 2>/dev/null | grep -q "is UP" && scontrol show slurmd >/dev/null 2>&1 \
        && sinfo --noheader --responding --states=idle,mixed,allocated,completing --format=%n 2>/dev/null | grep -q .
}
if [ -f "$SLURM_CONF" ] && answers; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    say "needs root (the daemons run as root here)"; exit 1
fi
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
        || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    { apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 \
           && apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null 2>&1; }; } \
      || { say "apt-get could not install slurmctld slurmd slurm-client munge"; exit 1; }
fi

# a fresh start: the daemons an earlier bring-up left there are stopped by their pid files (a pid now held by
# another program is left alone)
for daemon in slurmd slurmctld munged; do
    pid="$(cat "$DIR/$daemon.pid" 2>/dev/null || true)"
    if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$daemon" ]; then kill "$pid" 2>/dev/null || true; fi
done
sleep 1
rm -rf "$DIR"
mkdir -p "$DIR/state" "$DIR/spool" "$DIR/munge"
chmod 711 "$DIR/munge"   # the socket must be reachable by every user; the key stays 0400
dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$DIR/munge/munge.key"
munged --force --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
    --pid-file="$DIR/munged.pid" --log-file="$DIR/munged.log" --seed-file="$DIR/munge/munged.seed" \
    || { say "munged did not start (see $DIR/munged.log)"; exit 1; }

HOST="$(hostname -s)"
CPUS="$(nproc)"
cat > "$SLURM_CONF" <<EOF
# written by .ci/slurm_up.sh: a one-machine SLURM for the tests (root daemons, no cgroups, no accounting)
ClusterName=audiomrkd
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=16817
SlurmdPort=16818
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job may start again 11 s after it ended (default 121 s)
AuthInfo=socket=$DIR/munge/munge.socket,cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# pending jobs looked at every 2 s (defaults 60 s and 30 s): a requeued or dependent job starts without a wait
SchedulerParameters=sched_interval=2,bf_interval=2
MpiDefault=none
ReturnToService=2
JobRequeue=1
MinJobAge=600
KillWait=5
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

slurmctld -f "$SLURM_CONF" || { say "slurmctld did not start (see $DIR/slurmctld.log)"; exit 1; }
slurmd -f "$SLURM_CONF" || { say "slurmd did not start (see $DIR/slurmd.log)"; exit 1; }
for _ in $(seq 60); do
    if answers; then
        echo "slurm_up: SLURM $(sinfo --version | awk '{print $2}') up on $HOST ($CPUS CPUs); SLURM_CONF=$SLURM_CONF"
        exit 0
    fi
    sleep 1
done
say "the node did not come up in 60 s: $(tail -n 1 "$DIR/slurmd.log" 2>/dev/null)"
exit 1
