#!/usr/bin/env bash
# Stop what scripts/slurm/start.sh started, by PID only (its pid files + `scontrol listpids`).
D=${SLURM_TEST_DIR:-/tmp/distill-slurm}
export SLURM_CONF=${SLURM_CONF:-$D/etc/slurm.conf}
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null && grep -q "$2" "/proc/$(cat "$1")/comm"; }

# 1. jobs: slurmd exits on SIGTERM but leaves running job steps (slurmstepd) alive,
#    so cancel every job while the controller is up, and kill leftovers slurmd knows of.
if alive "$D/run/slurmctld.pid" slurmctld; then
  jobs=$(squeue -h -t PD,R,CG,S -o %A 2>/dev/null | sort -u)
  [ -n "$jobs" ] && scancel $jobs 2>/dev/null
  for _ in $(seq 50); do squeue -h -t R,CG -o %A 2>/dev/null | grep -q . || break; sleep 0.2; done
fi
if alive "$D/run/slurmd.pid" slurmd; then
  pids=$(scontrol listpids 2>/dev/null | awk 'NR>1{print $1}')
  [ -n "$pids" ] && kill -KILL $pids 2>/dev/null
fi

# 2. daemons: SIGTERM a group at once (each takes ~2 s to exit), wait, SIGKILL after 10 s
stop() {
  local pids=() x f pid
  for x in "$@"; do
    f=$D/run/$x.pid   # munged.pid is there only if start.sh started munged
    if alive "$f" "$x"; then pid=$(cat "$f"); kill -TERM "$pid"; pids+=("$pid"); echo "stopping $x ($pid)"; fi
    rm -f "$f"
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  done
  return 0
}
stop slurmd slurmctld
stop slurmdbd mariadbd munged
exit 0
