#!/usr/bin/env bash
# A single-node SLURM cluster on this machine for the `slurm` tests: munge + slurmctld + slurmd for localhost,
# one partition `debug`. Installs the Debian packages if they are missing (needs root), waits until the node is
# idle, exits 0. Idempotent: a running cluster is left as it is. Stop it with tests/cluster/stop_slurm.sh.
#
# Not for real clusters: it writes /etc/slurm/slurm.conf, and refuses to touch one it did not write.
set -euo pipefail

MARK="# written by specscale tests/cluster/start_slurm.sh"
CONF=/etc/slurm/slurm.conf
STATE=/var/spool/specscale-slurm          # slurmctld state and slurmd spool
LOGS=/var/log/specscale-slurm
HOST=$(hostname)                          # slurmd registers under this name: it must be the real one
WAIT_S=${SLURM_START_WAIT_S:-90}

say() { echo "start_slurm: $*"; }
die() { echo "start_slurm: $*" >&2; exit 1; }

node_state() { sinfo -h -n "$HOST" -o %t 2>/dev/null | head -n1 || true; }

if command -v sinfo >/dev/null && [[ "$(node_state)" =~ ^(idle|mix|alloc) ]]; then
    say "already running (node $HOST: $(node_state))"
    exit 0
fi

# -- packages -------------------------------------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    [[ $(id -u) -eq 0 ]] || die "slurm-wlm/munge are not installed and installing them needs root"
    say "installing slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null
fi
[[ $(id -u) -eq 0 ]] || die "starting the daemons needs root (they run as root so that jobs can write the project)"

# -- munge (authentication between the SLURM daemons and commands) --------------------------------------------------
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
if [[ ! -s /etc/munge/munge.key ]]; then
    mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
        || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
    munge -n | unmunge >/dev/null || die "munged does not answer (see /var/log/munge/munged.log)"
fi

# -- slurm.conf -----------------------------------------------------------------------------------------------------
if [[ -f $CONF ]] && ! grep -qF "$MARK" "$CONF"; then
    die "$CONF exists and was not written by this script; not touching it"
fi
CPUS=$(nproc)
# RealMemory must not exceed what slurmd detects, or the node is drained: stay 10 % under available memory.
MEM_MB=$(awk '/MemAvailable/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
# Lets a preempted job checkpoint (submitit's USR2 handler) before it is requeued; older slurmctld lack it.
CTLD_PARAMS=""
grep -aq preempt_send_user_signal "$(command -v slurmctld)" && CTLD_PARAMS="SlurmctldParameters=preempt_send_user_signal"
install -d -m 0755 /etc/slurm "$STATE/ctld" "$STATE/d" "$LOGS"
cat > "$CONF.tmp" <<EOF
$MARK
ClusterName=specscale
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=/run/specscale-slurmctld.pid
SlurmdPidFile=/run/specscale-slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
# no cgroups in containers: track job processes through /proc, bind nothing
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
# a single test node: look at the queue every few seconds (the defaults, 30 and 60 s, slow every test down)
SchedulerParameters=sched_interval=5,bf_interval=5
# no slurmdbd: sacct does not work, squeue/scontrol do
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
JobRequeue=1
MinJobAge=300
# scancel sends SIGTERM, which submitit ignores (it waits for USR2): SIGKILL follows after KillWait seconds
KillWait=2
# requeued jobs wait cred_expire seconds (default 120) before they may start again: keep the requeue test short
AuthInfo=cred_expire=10
$CTLD_PARAMS
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
if ! cmp -s "$CONF.tmp" "$CONF" 2>/dev/null; then
    mv "$CONF.tmp" "$CONF"
    # a daemon started on an older config must be restarted to read the new one
    pkill_pidfile() { [[ -f $1 ]] && kill "$(cat "$1")" 2>/dev/null || true; rm -f "$1"; }
    pkill_pidfile /run/specscale-slurmd.pid
    pkill_pidfile /run/specscale-slurmctld.pid
    sleep 1
else
    rm -f "$CONF.tmp"
fi

running() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
if ! running /run/specscale-slurmctld.pid; then
    say "starting slurmctld ($CPUS CPUs, ${MEM_MB} MB on $HOST)"
    /usr/sbin/slurmctld -i || die "slurmctld did not start (see $LOGS/slurmctld.log)"
fi
if ! running /run/specscale-slurmd.pid; then
    say "starting slurmd"
    /usr/sbin/slurmd || die "slurmd did not start (see $LOGS/slurmd.log)"
fi

# -- wait for the node ----------------------------------------------------------------------------------------------
deadline=$((SECONDS + WAIT_S))
state=""
while (( SECONDS < deadline )); do
    state=$(node_state)
    case "$state" in
        idle|mix|alloc) say "node $HOST is $state; partition debug ready"; exit 0 ;;
        drain*|down*|inval*|fail*) scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 1
done
die "node $HOST not idle after ${WAIT_S}s (state '${state:-no answer}'); see $LOGS/"
