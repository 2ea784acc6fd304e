#!/usr/bin/env bash
# Stop the single-node SLURM that start_slurm.sh started (slurmd, slurmctld; munged with --munge). Only the daemons
# recorded in the pid files that start_slurm.sh's slurm.conf names are signalled.
set -uo pipefail

stop() {  # stop <name> <pidfile>
    local pid
    [[ -f $2 ]] || return 0
    pid=$(cat "$2")
    if kill "$pid" 2>/dev/null; then
        for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        echo "stop_slurm: stopped $1 ($pid)"
    fi
    rm -f "$2"
}

stop slurmd /run/specscale-slurmd.pid
stop slurmctld /run/specscale-slurmctld.pid
if [[ ${1:-} == --munge ]]; then
    stop munged /run/munge/munged.pid
fi
exit 0
