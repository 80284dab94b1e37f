#!/usr/bin/env bash
# tests/slurm/start-cluster.sh - install, configure and start a single-node
# Slurm cluster for the sftdpo Slurm tests (Debian 12 / Slurm 22.05), as root,
# WITHOUT systemd (every daemon is started by hand and tracked by pid file).
#
#   partitions : cpu (default) and gpu, both on this one node
#   GPU        : one fake GPU gres (gres.conf File=/dev/null): `sbatch --gpus=1`
#                is accepted and runs with CUDA_VISIBLE_DEVICES=0, no device
#   accounting : slurmdbd + MariaDB, so `sacct` works (the Snakemake Slurm
#                executor plugin polls job status with sacct; the tests read
#                partitions / AllocTRES / states from it)
#   guard      : QOS "cpuonly" (MaxTRESPerJob=gres/gpu=0, Flags=DenyOnLimit)
#                on partition cpu: a GPU job sent to cpu is refused by sbatch
#
# Idempotent: with everything up it only re-checks health (~3 s); after
# stop-cluster.sh it restarts the daemons; from nothing it apt-installs first.
#
# Exit codes: 0 ready, 2 not root, 3 the packages cannot be installed,
#             1 anything else (a daemon or the health check failed).
# Env: CLUSTER_NAME (default sftdpo), SLURM_DB_PASS, APT_OPTS (extra apt-get
#      options), HEALTH_CHECK=0 to skip the two test jobs at the end.
set -euo pipefail

CLUSTER_NAME="${CLUSTER_NAME:-sftdpo}"
DB_PASS="${SLURM_DB_PASS:-slurmdbpass}"
HEALTH_CHECK="${HEALTH_CHECK:-1}"
export DEBIAN_FRONTEND=noninteractive

if [ "$(id -u)" != 0 ]; then
  echo "start-cluster.sh: must run as root" >&2
  exit 2
fi

exec 3>&2                          # die() reports here even inside wait_for
T_START=$EPOCHREALTIME
log() { echo "[start-cluster $(awk "BEGIN{printf \"%.1f\", $EPOCHREALTIME - $T_START}")s] $*"; }
die() {
  echo "start-cluster.sh: ERROR: $*" >&3
  for f in /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log \
           /var/log/slurm/slurmdbd.log /var/log/mysql/error.log \
           /var/log/slurm/daemons.out; do
    [ -f "$f" ] && { echo "--- tail $f" >&3; tail -n 15 "$f" >&3; }
  done
  exit 1
}
# wait_for SECONDS DESCRIPTION CMD... : poll CMD every 0.5 s
wait_for() {
  local secs=$1 what=$2 i
  shift 2
  for ((i = 0; i < secs * 2; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  die "timed out after ${secs}s waiting for: $what"
}
# running / stop_pid: shared with stop-cluster.sh
# shellcheck source=daemons.sh
source "$(dirname "${BASH_SOURCE[0]}")/daemons.sh"
# write_if_changed FILE MODE OWNER:GROUP < content ; returns 0 if FILE changed
write_if_changed() {
  local f=$1 mode=$2 owner=$3 tmp
  tmp=$(mktemp)
  cat >"$tmp"
  if [ -f "$f" ] && cmp -s "$tmp" "$f"; then rm -f "$tmp"; return 1; fi
  install -m "$mode" -o "${owner%:*}" -g "${owner#*:}" "$tmp" "$f"
  rm -f "$tmp"
  return 0
}
# daemon CMD... : start a self-daemonizing server detached from our stdio and
# fd 3, so that a caller reading our output through a pipe is not kept waiting
# for EOF by the daemons; their early messages go to /var/log/slurm/daemons.out
daemon() {
  "$@" </dev/null >>/var/log/slurm/daemons.out 2>&1 3>&- || die "could not start: $*"
}

# ------------------------------------------------------------------ 1. install
PKGS="munge slurmctld slurmd slurm-client slurmdbd mariadb-server"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
    missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "[start-cluster] apt-get install$missing"
  # Package scripts do not start services here (policy-rc.d / no systemd);
  # if they do (sysv scripts), everything below checks pid files first.
  # shellcheck disable=SC2086
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends \
          ${APT_OPTS:-} $missing >/dev/null; }; then
    echo "start-cluster.sh: cannot install:$missing" >&2
    exit 3
  fi
fi
log "slurm $(dpkg-query -W -f='${Version}' slurmctld), munge $(dpkg-query -W -f='${Version}' munge)"

# ------------------------------------------------------------------- 2. config
H=$(hostname -s)
HWLINE=$(slurmd -C | head -n 1)    # NodeName=vm CPUs=2 Boards=1 ... RealMemory=N
HW=$(echo "$HWLINE" | sed -E 's/^NodeName=[^ ]+ //; s/ *RealMemory=[0-9]+//')
MEM=$(echo "$HWLINE" | sed -nE 's/.*RealMemory=([0-9]+).*/\1/p')
MEM=$((MEM * 90 / 100))            # below what slurmd detects, or the node drains

install -d -o slurm -g slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm
install -d -m 755 /etc/slurm

# slurmctld refuses to start when its state directory belongs to another
# ClusterName (e.g. a cluster set up by hand before): drop that stale state.
CN_FILE=/var/lib/slurm/slurmctld/clustername
if [ -f "$CN_FILE" ] && [ "$(cat "$CN_FILE")" != "$CLUSTER_NAME" ]; then
  log "state of cluster '$(cat "$CN_FILE")' found; resetting slurmctld state"
  stop_pid /run/slurmd.pid slurmd
  stop_pid /run/slurmctld.pid slurmctld
  find /var/lib/slurm/slurmctld -mindepth 1 -delete
fi

SLURM_CHANGED=0
write_if_changed /etc/slurm/slurm.conf 644 root:root <<EOF && SLURM_CHANGED=1
# generated by sftdpo tests/slurm/start-cluster.sh
ClusterName=$CLUSTER_NAME
SlurmctldHost=$H(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
SlurmUser=slurm
SlurmdUser=root
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# no cgroups without systemd: plain process tracking, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# without it a job that gives no --mem takes the whole node's memory
DefMemPerCPU=1000
ReturnToService=2
MinJobAge=300
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
AccountingStorageTRES=gres/gpu
AccountingStorageEnforce=limits
# keep sbatch --comment in the accounting database: the Snakemake plugin puts
# rule_<rule>[_wildcards_<wildcards>] there, and the tests map jobs to rules
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none
GresTypes=gpu
NodeName=$H NodeAddr=127.0.0.1 $HW RealMemory=$MEM Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes=$H Default=YES MaxTime=INFINITE State=UP QOS=cpuonly
PartitionName=gpu Nodes=$H MaxTime=INFINITE State=UP
EOF

# slurmd 22.05 drops a GPU gres without File= ("Removing file-less GPU") and
# the node drains: point the fake GPU at /dev/null.
write_if_changed /etc/slurm/gres.conf 644 root:root <<EOF && SLURM_CHANGED=1
AutoDetect=off
NodeName=$H Name=gpu File=/dev/null
EOF

DBD_CHANGED=0
write_if_changed /etc/slurm/slurmdbd.conf 600 slurm:slurm <<EOF && DBD_CHANGED=1
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=slurm
PidFile=/run/slurmdbd.pid
LogFile=/var/log/slurm/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=3306
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF

# -------------------------------------------------------------------- 3. start
# munge
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --keyfile /etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
fi
install -d -o munge -g munge -m 755 /run/munge
if ! running /run/munge/munged.pid munged; then
  log "starting munged"
  daemon runuser -u munge -- /usr/sbin/munged
fi
wait_for 20 "munge" sh -c 'munge -n | unmunge'

# MariaDB + slurmdbd
install -d -o mysql -g mysql -m 755 /run/mysqld
install -d -o mysql -g adm -m 2750 /var/log/mysql
if [ ! -d /var/lib/mysql/mysql ]; then
  mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
fi
if ! mariadb-admin ping >/dev/null 2>&1; then
  log "starting mariadbd"
  daemon start-stop-daemon --start --background --oknodo --exec /usr/sbin/mariadbd \
    -- --user=mysql --log-error=/var/log/mysql/error.log
  wait_for 60 "mariadbd" mariadb-admin ping
fi
mariadb <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF
[ "$DBD_CHANGED" = 1 ] && stop_pid /run/slurmdbd.pid slurmdbd
if ! running /run/slurmdbd.pid slurmdbd; then
  log "starting slurmdbd"
  daemon /usr/sbin/slurmdbd
fi
wait_for 60 "slurmdbd (sacctmgr show cluster)" sacctmgr -n show cluster

# slurmctld + slurmd: restart both when slurm.conf/gres.conf changed, so that
# they never run with different configs.
if [ "$SLURM_CHANGED" = 1 ]; then
  stop_pid /run/slurmd.pid slurmd
  stop_pid /run/slurmctld.pid slurmctld
fi
if ! running /run/slurmctld.pid slurmctld; then
  log "starting slurmctld"
  daemon /usr/sbin/slurmctld
fi
wait_for 60 "slurmctld (scontrol ping)" sh -c 'scontrol ping | grep -q UP'

# slurmctld registers the cluster and its TRES (gres/gpu) in slurmdbd itself;
# the QOS can only limit gres/gpu once that TRES exists.
wait_for 60 "cluster $CLUSTER_NAME in slurmdbd" \
  sh -c "sacctmgr -n -P show cluster format=cluster | grep -qx '$CLUSTER_NAME'"
wait_for 60 "TRES gres/gpu in slurmdbd" \
  sh -c "sacctmgr -n -P show tres format=type,name | grep -qx 'gres|gpu'"
if ! sacctmgr -n -P show qos cpuonly format=name | grep -qx cpuonly; then
  log "creating QOS cpuonly (no GPUs in partition cpu)"
  sacctmgr -i -Q add qos cpuonly MaxTRESPerJob=gres/gpu=0 Flags=DenyOnLimit >/dev/null
  scontrol reconfigure
fi

if ! running /run/slurmd.pid slurmd; then
  log "starting slurmd"
  daemon /usr/sbin/slurmd
fi
node_ok() {
  local st
  st=$(sinfo -h -N -n "$H" -o %T 2>/dev/null | head -n 1)
  case "$st" in
    idle | mixed | allocated | completing) return 0 ;;
    *drain* | down* | inval* | fail*)
      scontrol update NodeName="$H" State=RESUME 2>/dev/null
      return 1 ;;
    *) return 1 ;;
  esac
}
wait_for 60 "node $H idle" node_ok

# ------------------------------------------------------------------- 4. health
if [ "$HEALTH_CHECK" = 1 ]; then
  log "health check"
  J1=$(sbatch --parsable -J health-cpu -p cpu -t 2 --mem 100 -o /dev/null --wrap 'srun true')
  # shellcheck disable=SC2016  # $CUDA_VISIBLE_DEVICES is for the job's shell
  J2=$(sbatch --parsable -J health-gpu -p gpu -t 2 --mem 100 --gpus=1 -o /dev/null \
         --wrap 'test "$CUDA_VISIBLE_DEVICES" = 0 && srun true')
  job_state() { sacct -X -n -P -j "$1" -o State 2>/dev/null | head -n 1; }
  both_done() {
    local s1 s2
    s1=$(job_state "$J1"); s2=$(job_state "$J2")
    case "$s1$s2" in *FAIL* | *CANCEL* | *TIMEOUT* | *OUT_OF_ME*)
      die "health jobs ended badly: $J1=$s1 $J2=$s2" ;; esac
    [ "$s1" = COMPLETED ] && [ "$s2" = COMPLETED ]
  }
  wait_for 90 "health jobs $J1 (cpu) and $J2 (gpu, --gpus=1) COMPLETED" both_done
  if sbatch --parsable -p cpu --gpus=1 -o /dev/null --wrap true >/dev/null 2>&1; then
    die "partition cpu accepted a GPU job (QOS cpuonly not in force)"
  fi
fi
sinfo
log "cluster '$CLUSTER_NAME' ready (node $H, partitions cpu,gpu)"
