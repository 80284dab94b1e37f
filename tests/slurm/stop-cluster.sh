#!/usr/bin/env bash
# tests/slurm/stop-cluster.sh - stop what tests/slurm/start-cluster.sh started
# (by pid file, no systemd).  Cancels all jobs first.  Idempotent: whatever is
# not running is skipped.  Leaves packages, configs, job/accounting state and
# the database in place, so start-cluster.sh can start them again (~6 s).
set -uo pipefail

# shellcheck source=daemons.sh
source "$(dirname "${BASH_SOURCE[0]}")/daemons.sh"

if running /run/slurmctld.pid slurmctld; then
  jobs=$(squeue -h -o %A 2>/dev/null || true)
  if [ -n "$jobs" ]; then
    echo "cancelling jobs: $(echo "$jobs" | tr '\n' ' ')"
    # shellcheck disable=SC2086
    scancel $jobs || true
    for ((i = 0; i < 30; i++)); do
      [ -z "$(squeue -h -t RUNNING,COMPLETING -o %A 2>/dev/null)" ] && break
      sleep 1
    done
  fi
fi

stop_pid /run/slurmd.pid slurmd
stop_pid /run/slurmctld.pid slurmctld
stop_pid /run/slurmdbd.pid slurmdbd
if running /run/mysqld/mysqld.pid mariadbd; then
  echo "stopping mariadbd (mariadb-admin shutdown)"
  mariadb-admin shutdown 2>/dev/null || stop_pid /run/mysqld/mysqld.pid mariadbd
  for ((i = 0; i < 60; i++)); do
    running /run/mysqld/mysqld.pid mariadbd || break
    sleep 0.5
  done
  stop_pid /run/mysqld/mysqld.pid mariadbd >/dev/null
else
  echo "mariadbd: not running"
fi
stop_pid /run/munge/munged.pid munged
echo "stop-cluster: done"
