#!/usr/bin/env bash
# Start a one-node Slurm cluster (Debian's slurm-wlm) on loopback, without systemd, for the
# tests and for trying `distill slurm submit` on one machine. Needs root.
# Idempotent: installs only if missing, starts only daemons not already running.
# Everything Slurm writes lives under $SLURM_TEST_DIR; munge uses its Debian defaults.
# Clients find the cluster with: export SLURM_CONF=$SLURM_TEST_DIR/etc/slurm.conf
#   SLURM_CTLD_PORT / SLURM_D_PORT  ports of slurmctld / slurmd (6817 / 6818)
#   SLURM_LINK_CONF=0               leave /etc/slurm/slurm.conf alone
#   NODE_CPUS / NODE_MEM_MB / NODE_GPUS  what the node declares (GPUs are fake devices)
# Do not pass these to sbatch/srun: they read SLURM_* variables of their own (SLURM_GPUS).
set -euo pipefail
D=${SLURM_TEST_DIR:-/tmp/distill-slurm}
CTLD_PORT=${SLURM_CTLD_PORT:-6817}
D_PORT=${SLURM_D_PORT:-6818}
AUTH=${SLURM_AUTH:-munge}           # munge | none
DBD=${SLURM_DBD:-0}                 # 1: also run mariadb + slurmdbd so that sacct works
HOST=$(hostname -s)
CONF=$D/etc/slurm.conf
mkdir -p "$D"/{etc,state/ctld,state/d,log,run}

# 1. install (~8 s for 8 packages; SLURM_DBD=1 adds ~20 s for 24 more)
PKGS="slurmctld slurmd slurm-client munge"; BINS="slurmctld slurmd sbatch munged"
[ "$DBD" = 1 ] && PKGS="$PKGS slurmdbd mariadb-server" && BINS="$BINS slurmdbd mariadbd"
for b in $BINS; do
  command -v "$b" >/dev/null && continue
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >"$D/log/apt.log" 2>&1
  apt-get -y -q install --no-install-recommends $PKGS >>"$D/log/apt.log" 2>&1
  break
done

# 2. slurm.conf (rewritten each run; the node is "real" for 2 CPUs but config_overrides
#    lets you declare more CPUs/memory/GPUs than the machine has, for big sbatch requests)
: "${NODE_CPUS:=$(nproc)}" "${NODE_MEM_MB:=$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 - 1024 ))}"
: "${NODE_GPUS:=0}"
GRES_NODE=""; GRES_TYPES=""
if [ "$NODE_GPUS" -gt 0 ]; then
  GRES_TYPES="GresTypes=gpu"; GRES_NODE="Gres=gpu:$NODE_GPUS"
  # gres/gpu only counts GPUs that have a File=, which must be a character device:
  # fake ones with /dev/null's numbers (no cgroups here, so nothing opens them)
  mkdir -p "$D/fakegpu"
  for i in $(seq 0 $((NODE_GPUS - 1))); do [ -c "$D/fakegpu/nvidia$i" ] || mknod "$D/fakegpu/nvidia$i" c 1 3; done
  echo "NodeName=$HOST Name=gpu File=$D/fakegpu/nvidia[0-$((NODE_GPUS - 1))]" > "$D/etc/gres.conf.new"
else
  : > "$D/etc/gres.conf.new"
fi
cat > "$CONF.new" <<EOF
ClusterName=testcluster
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/$AUTH
CredType=cred/$AUTH
SlurmctldPort=$CTLD_PORT
SlurmdPort=$D_PORT
StateSaveLocation=$D/state/ctld
SlurmdSpoolDir=$D/state/d
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
$( [ "$DBD" = 1 ] && printf 'AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=localhost\nAccountingStoragePort=6819' \
                || echo AccountingStorageType=accounting_storage/none )
JobCompType=jobcomp/filetxt
JobCompLoc=$D/log/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
ReturnToService=2
MinJobAge=86400
DependencyParameters=kill_invalid_depend
SchedulerParameters=sched_interval=2,batch_sched_delay=0,sched_min_interval=0
SlurmdParameters=config_overrides
$GRES_TYPES
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$NODE_CPUS RealMemory=$NODE_MEM_MB $GRES_NODE State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
CHANGED=0
for f in "$CONF" "$D/etc/gres.conf"; do cmp -s "$f.new" "$f" || CHANGED=1; mv "$f.new" "$f"; done
# clients (sbatch, squeue, ...) find the config through SLURM_CONF or /etc/slurm/slurm.conf
[ "${SLURM_LINK_CONF:-1}" = 1 ] && mkdir -p /etc/slurm && ln -sfn "$CONF" /etc/slurm/slurm.conf
export SLURM_CONF=$CONF

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null && grep -q "$2" "/proc/$(cat "$1")/comm"; }

# 3. munge (Debian defaults: /etc/munge/munge.key made by postinst, socket in /run/munge)
if [ "$AUTH" = munge ]; then
  if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    install -d -o munge -g munge -m 0755 /run/munge
    [ -s /etc/munge/munge.key ] || { mungekey --create --force; chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key; }
    runuser -u munge -- /usr/sbin/munged        # daemonizes, pid -> /run/munge/munged.pid
    cp /run/munge/munged.pid "$D/run/munged.pid"  # mark it as started by us
    for _ in $(seq 50); do munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  fi
fi

# 3b. optional accounting: MariaDB (TCP on 127.0.0.1:3306, data in $D/mysql) + slurmdbd
if [ "$DBD" = 1 ]; then
  SQL="mariadb --no-defaults -S $D/run/mysql.sock -uroot"
  [ -d "$D/mysql/mysql" ] || mariadb-install-db --no-defaults --datadir="$D/mysql" --user=root \
      --auth-root-authentication-method=socket --skip-test-db >"$D/log/mariadb-install.log" 2>&1
  if ! alive "$D/run/mariadbd.pid" mariadbd; then
    setsid mariadbd --no-defaults --datadir="$D/mysql" --socket="$D/run/mysql.sock" --pid-file="$D/run/mariadbd.pid" \
      --bind-address=127.0.0.1 --port=3306 --user=root --log-error="$D/log/mariadb.log" \
      --skip-name-resolve --innodb-buffer-pool-size=64M </dev/null >/dev/null 2>&1 &
    for _ in $(seq 100); do $SQL -e 'select 1' >/dev/null 2>&1 && break; sleep 0.1; done
  fi
  $SQL -e "CREATE OR REPLACE USER slurm@'127.0.0.1' IDENTIFIED BY 'slurm';
           GRANT ALL ON slurm_acct_db.* TO slurm@'127.0.0.1'; FLUSH PRIVILEGES;"
  # slurmdbd reads slurmdbd.conf next to $SLURM_CONF; must be mode 600 and owned by SlurmUser
  cat > "$D/etc/slurmdbd.conf" <<EOF
AuthType=auth/$AUTH
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
PidFile=$D/run/slurmdbd.pid
LogFile=$D/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3306
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$D/etc/slurmdbd.conf"
  alive "$D/run/slurmdbd.pid" slurmdbd || slurmdbd
  for _ in $(seq 100); do (: </dev/tcp/127.0.0.1/6819) 2>/dev/null && break; sleep 0.1; done
  sacctmgr -n -P list cluster format=cluster | grep -qx testcluster || sacctmgr -i add cluster testcluster >/dev/null
fi

# 4. slurm daemons (they daemonize themselves and write their pid files);
#    node resources changed -> restart them (scontrol reconfigure is not enough for that)
if [ "$CHANGED" = 1 ]; then
  for x in slurmd slurmctld; do alive "$D/run/$x.pid" $x && kill -TERM "$(cat "$D/run/$x.pid")"; done
  for x in slurmd slurmctld; do while alive "$D/run/$x.pid" $x; do sleep 0.1; done; done
fi
alive "$D/run/slurmctld.pid" slurmctld || slurmctld -f "$CONF"
alive "$D/run/slurmd.pid" slurmd || slurmd -f "$CONF"

# 5. wait for the node to be idle (or mixed/allocated if jobs are already running)
for _ in $(seq 300); do
  st=$(sinfo -h -N -n "$HOST" -o %T 2>/dev/null || true)
  case "$st" in idle|mixed|allocated) echo "slurm up: node $HOST $st"; exit 0;; esac
  case "$st" in inval*) break;; drain*|down*) scontrol update nodename="$HOST" state=resume 2>/dev/null || true;; esac
  sleep 0.2
done
echo "slurm did not come up; state='$st'" >&2; sinfo -R >&2 || true
tail -n 20 "$D/log/slurmctld.log" "$D/log/slurmd.log" >&2 || true
exit 1
